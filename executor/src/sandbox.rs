//! Running one command in a sandbox: [`run`] (RUN steps and `kiln run`).
//!
//! Process model: the parent prepares *everything* first — the user (resolved from the image's own
//! `/etc/passwd` and `/etc/group` read through the layers), the environment, the contents of the
//! generated `/etc/hosts`/`hostname`/`resolv.conf`, pipes, and the child's whole setup as a [`Step`]
//! list of ready C strings (`plan.rs`) — then calls `clone(2)` with `CLONE_NEWNS | CLONE_NEWPID |
//! CLONE_NEWUTS | CLONE_NEWIPC` (`| CLONE_NEWNET` for `--network none`) and `CLONE_VM | CLONE_VFORK`
//! (as `posix_spawn`: no copy of our page tables; we wait until it execs). The child writes the
//! generated files, the mount stubs and its root mount point into a tmpfs of its own mounted on the
//! scratch dir, so a run creates nothing on the host's disk. The child is PID 1 of its PID namespace
//! from its first instruction and only walks the step list with raw syscalls until `execve`, so it is
//! safe even though the parent (tests, tokio) is multi-threaded: no allocation, no lock. We chose this
//! over re-executing our own binary because it costs no extra exec and keeps the library
//! self-contained. Setup errors travel back over a close-on-exec pipe as (step index, errno); EOF on
//! that pipe means the exec succeeded.
//!
//! The command is PID 1: when it exits the kernel kills every other process of the step, so a RUN that
//! leaves a daemon behind cannot outlive the step. As PID 1 it also ignores signals it has no handler
//! for (as in Docker without `--init`).
//!
//! The command is confined as Docker confines a default container ([`SandboxSpec::confinement`],
//! [`crate::confinement`]): Docker's 14 capabilities (none effective for a non-root user), masked and
//! read-only paths under /proc and /sys, and `nodev` on every filesystem it can write to.
//!
//! With [`SandboxSpec::init`] (`kiln run --init`) the child forks as its last step and stays PID 1 as
//! a minimal init ([`crate::init`]) while PID 2 execs the command; that child is then cloned without
//! `CLONE_VM | CLONE_VFORK` (it never execs, so it must neither share our memory nor keep us waiting).
//!
//! With `tty`, the pty is opened by the child from the container's own fresh devpts (so `tty` prints
//! `/dev/pts/0` inside) and the master is passed to the parent over a socketpair; the caller's
//! terminal mode (raw or not) is the caller's business.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use kiln_image::user::{ExecUser, UserError, resolve_exec_user};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sched::CloneFlags;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};
use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, socketpair,
};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Pid, pipe2};
use thiserror::Error;

use crate::cgroup::{CgroupError, ResourceLimits, SandboxCgroup};
use crate::confinement::{Confinement, MASKED_PATHS, MaskKind, READ_ONLY_PATHS};
use crate::plan::{self, ExecArgs, PlanError, Step, StepFailure, cpath, cstr};
use crate::snapshot::{MountStub, RootMount, StubKind};
use crate::syscall::{LinuxSyscall, MOUNT_ATTR_NODEV, MOUNT_ATTR_RDONLY};

/// Docker's default PATH, used when the image sets none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const CHILD_STACK_SIZE: usize = 1024 * 1024;
const DEV_SIZE: &str = "65536k";
/// The sandbox's own tmpfs (generated /etc files, which the command may append to, and stubs).
const SCRATCH_SIZE: &str = "16m";
/// The device nodes of the minimal /dev: bind mounts of the host's own nodes, since /dev itself is
/// `nodev` (see the Confinement section of `docs/sandbox.md`).
const DEV_NODES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Errors of [`run`]; each says what failed and where.
#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    #[error("invalid sandbox spec: {0}")]
    Plan(#[from] PlanError),
    #[error("resolving user {user:?}: {source}")]
    User { user: String, source: UserError },
    #[error("reading {path} from the root filesystem: {source}")]
    ReadRootFile {
        path: &'static str,
        source: io::Error,
    },
    #[error("sandbox: {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("sandbox: {action}: {source}")]
    Sys { action: &'static str, source: Errno },
    #[error("sandbox setup failed: {step}: {errno}")]
    Setup { step: String, errno: Errno },
    #[error("exec {command:?}: executable file not found in $PATH")]
    CommandNotFound { command: String },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
}

fn sys_err(action: &'static str) -> impl FnOnce(Errno) -> SandboxError {
    move |source| SandboxError::Sys { action, source }
}

/// Network of the sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// The host's network namespace (Docker's build default).
    #[default]
    Host,
    /// A new network namespace with only `lo`, up.
    None,
}

/// A mount besides the root, in the order given. Targets are absolute paths inside the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraMount {
    /// A host file or dir bind-mounted (recursively).
    Bind {
        source: PathBuf,
        target: PathBuf,
        read_only: bool,
    },
    /// A fresh tmpfs.
    Tmpfs {
        target: PathBuf,
        size_bytes: Option<u64>,
    },
    /// A secret: a host file bind-mounted read-only.
    Secret { source: PathBuf, target: PathBuf },
    /// A fresh tmpfs with the caller's mount flags (`MS_*`) and data (`size=...,mode=...`), as
    /// `kiln run --tmpfs` and `--mount type=tmpfs` give them.
    TmpfsWithOptions {
        target: PathBuf,
        flags: libc::c_ulong,
        data: String,
    },
}

/// What to run and how.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// The root, as a snapshotter described it.
    pub rootfs: RootMount,
    /// A dir (created when missing) that the sandbox mounts a tmpfs of its own on, inside its own
    /// mount namespace only, for its generated files and root mount point: nothing is ever written
    /// into it on the host, so sandboxes running at the same time may share it.
    pub scratch_dir: PathBuf,
    /// argv; `args[0]` is searched in the container's PATH unless it contains '/'.
    pub args: Vec<String>,
    /// KEY=VALUE. PATH and HOME get Docker's defaults when absent.
    pub env: Vec<String>,
    /// Working dir (absolute); created, owned by the user, when missing.
    pub cwd: String,
    /// Docker USER spec (`name`, `uid`, `name:group`, `uid:gid`...); empty = root.
    pub user: String,
    pub hostname: String,
    pub network: NetworkMode,
    pub mounts: Vec<ExtraMount>,
    /// Extra `/etc/hosts` lines (`--add-host name:ip`), as (name, ip).
    pub extra_hosts: Vec<(String, String)>,
    /// Applied with cgroup v1 or v2 controllers; skipped with a warning where neither has them.
    pub limits: ResourceLimits,
    /// `--init`: PID 1 is a minimal init that forwards signals to the command, reaps zombies and
    /// exits with the command's status (see [`crate::init`]); the command runs as PID 2.
    pub init: bool,
    /// Capabilities, masked paths and device access: Docker's default unless loosened
    /// (`--privileged`, `--cap-add`, `RUN --security=insecure`).
    pub confinement: Confinement,
}

impl SandboxSpec {
    /// A spec with defaults: root user, cwd `/`, hostname `kiln`, host network, no extra mounts.
    pub fn new(
        rootfs: RootMount,
        scratch_dir: impl Into<PathBuf>,
        args: Vec<String>,
    ) -> SandboxSpec {
        SandboxSpec {
            rootfs,
            scratch_dir: scratch_dir.into(),
            args,
            env: Vec::new(),
            cwd: "/".to_string(),
            user: String::new(),
            hostname: "kiln".to_string(),
            network: NetworkMode::Host,
            mounts: Vec::new(),
            extra_hosts: Vec::new(),
            limits: ResourceLimits::default(),
            init: false,
            confinement: Confinement::docker_default(),
        }
    }
}

/// Where the command's stdin comes from.
#[derive(Default)]
pub enum Input {
    /// `/dev/null`.
    #[default]
    Null,
    /// The caller's own stdin.
    Inherit,
    /// Copied from a reader by a background thread.
    Reader(Box<dyn Read + Send>),
}

/// Where an output stream goes.
#[derive(Default)]
pub enum Output<'a> {
    /// `/dev/null`.
    #[default]
    Null,
    /// The caller's own stdout/stderr.
    Inherit,
    /// Streamed into a writer as it arrives (see [`LineCallback`] for line-by-line callbacks).
    Writer(&'a mut (dyn Write + Send)),
}

/// The sandbox's standard streams.
#[derive(Default)]
pub struct SandboxIo<'a> {
    pub stdin: Input,
    pub stdout: Output<'a>,
    /// Ignored with `tty` (a terminal has one output stream, which goes to `stdout`).
    pub stderr: Output<'a>,
    /// Run on a pseudo-terminal (`-t`).
    pub tty: bool,
    /// Forward SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 received by this process to
    /// the command while it runs, and with `tty` copy the terminal size to the pty on SIGWINCH (for
    /// `kiln run`; installs process-wide handlers for the duration, so one run at a time).
    pub forward_signals: bool,
    /// Called with the host pid of the sandbox's PID 1 once the command has been exec'd (with
    /// `--init`, once the init's child has): `kiln run` records it so that `kiln exec`/`stop` can
    /// find the container. It must not block.
    pub on_started: Option<&'a (dyn Fn(i32) + Sync)>,
}

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    /// Killed by this signal number.
    Signaled(i32),
    /// The memory limit was reached and the kernel's OOM killer ended a process of the sandbox
    /// (Docker's `OOMKilled`); `code` is the status the command ended with (137 when the command
    /// itself was killed).
    OutOfMemory {
        code: i32,
        limit_bytes: u64,
    },
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        *self == ExitStatus::Exited(0)
    }

    /// The exit code, or 128 + signal as shells report it.
    pub fn code(&self) -> i32 {
        match *self {
            ExitStatus::Exited(code) => code,
            ExitStatus::Signaled(signal) => 128 + signal,
            ExitStatus::OutOfMemory { code, .. } => code,
        }
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Exited(code) => write!(f, "exit code {code}"),
            // The default seccomp filter kills a process that makes a 32-bit x86 system call (its
            // architecture check cannot tell those apart from an attempt to slip past the filter).
            ExitStatus::Signaled(libc::SIGSYS) => write!(
                f,
                "killed by signal SIGSYS: a system call the seccomp filter refuses (32-bit x86 \
                 programs need `--security-opt seccomp=unconfined` or `RUN --security=insecure`)"
            ),
            ExitStatus::Signaled(signal) => {
                let name = Signal::try_from(*signal)
                    .map_or_else(|_| signal.to_string(), |s| s.to_string());
                write!(f, "killed by signal {name}")
            }
            ExitStatus::OutOfMemory { limit_bytes, .. } => write!(
                f,
                "killed: out of memory (limit {})",
                crate::cgroup::format_bytes(*limit_bytes)
            ),
        }
    }
}

/// A writer that calls `callback` once per complete line (without the newline), and once more for a
/// trailing partial line on flush.
pub struct LineCallback<F: FnMut(&[u8])> {
    callback: F,
    pending: Vec<u8>,
}

impl<F: FnMut(&[u8])> LineCallback<F> {
    pub fn new(callback: F) -> LineCallback<F> {
        LineCallback {
            callback,
            pending: Vec::new(),
        }
    }
}

impl<F: FnMut(&[u8])> Write for LineCallback<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        while let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
            (self.callback)(&self.pending[..end]);
            self.pending.drain(..=end);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            (self.callback)(&self.pending);
            self.pending.clear();
        }
        Ok(())
    }
}

/// Paths in the container that a sandbox mounts over: create them with the snapshot
/// ([`crate::snapshot::Snapshotter::prepare`]) so that they exist without landing in the diff.
pub fn mount_stubs(mounts: &[ExtraMount]) -> Vec<MountStub> {
    let dir = |p: &str| MountStub {
        path: p.into(),
        kind: StubKind::Dir,
    };
    let file = |p: &str| MountStub {
        path: p.into(),
        kind: StubKind::File,
    };
    let mut stubs = vec![
        dir("/proc"),
        dir("/sys"),
        dir("/dev"),
        file("/etc/hosts"),
        file("/etc/hostname"),
        file("/etc/resolv.conf"),
    ];
    for mount in mounts {
        stubs.push(match mount {
            ExtraMount::Bind { source, target, .. } => {
                let kind = if fs::metadata(source).is_ok_and(|m| m.is_dir()) {
                    StubKind::Dir
                } else {
                    StubKind::File
                };
                MountStub {
                    path: target.clone(),
                    kind,
                }
            }
            ExtraMount::Tmpfs { target, .. } | ExtraMount::TmpfsWithOptions { target, .. } => {
                MountStub {
                    path: target.clone(),
                    kind: StubKind::Dir,
                }
            }
            ExtraMount::Secret { target, .. } => MountStub {
                path: target.clone(),
                kind: StubKind::File,
            },
        });
    }
    stubs
}

/// What the parent works out before building the plan.
struct Prepared {
    user: ExecUser,
    env: Vec<String>,
    path_var: String,
    /// Generated `/etc` files, (name, contents), written by the child into its tmpfs.
    etc_files: [(&'static str, String); 3],
}

/// The child's standard streams as fds to dup (None = leave as inherited), or a pty.
enum ChildStdio {
    Fds([Option<RawFd>; 3]),
    Pty { socket: RawFd },
}

struct Plan {
    steps: Vec<Step>,
    slots: usize,
}

fn validate(spec: &SandboxSpec) -> Result<(), SandboxError> {
    if spec.args.is_empty() {
        return Err(SandboxError::InvalidSpec("empty command".into()));
    }
    if !spec.cwd.starts_with('/') {
        return Err(SandboxError::InvalidSpec(format!(
            "working dir {:?} is not absolute",
            spec.cwd
        )));
    }
    for mount in &spec.mounts {
        let target = match mount {
            ExtraMount::Bind { target, .. }
            | ExtraMount::Tmpfs { target, .. }
            | ExtraMount::TmpfsWithOptions { target, .. }
            | ExtraMount::Secret { target, .. } => target,
        };
        if !target.is_absolute() {
            return Err(SandboxError::InvalidSpec(format!(
                "mount target {} is not absolute",
                target.display()
            )));
        }
    }
    Ok(())
}

fn read_root_text(rootfs: &RootMount, path: &'static str) -> Result<Option<String>, SandboxError> {
    let bytes = rootfs
        .read_file(Path::new(path))
        .map_err(|source| SandboxError::ReadRootFile { path, source })?;
    Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

fn env_value<'e>(env: &'e [String], key: &str) -> Option<&'e str> {
    env.iter()
        .rev()
        .find_map(|e| e.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

fn hosts_file(spec: &SandboxSpec) -> String {
    let mut hosts = format!(
        "127.0.0.1\tlocalhost {}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        spec.hostname
    );
    for (name, ip) in &spec.extra_hosts {
        hosts.push_str(&format!("{ip}\t{name}\n"));
    }
    hosts
}

/// The host's resolv.conf (systemd-resolved's upstream file when the stub resolver is in use, as
/// Docker does); Google's servers when there is none, also as Docker does.
fn resolv_conf() -> String {
    let read = |p: &str| fs::read_to_string(p).ok();
    let mut text = read("/etc/resolv.conf").unwrap_or_default();
    if text.contains("127.0.0.53") {
        if let Some(upstream) = read("/run/systemd/resolve/resolv.conf") {
            text = upstream;
        }
    }
    if !text
        .lines()
        .any(|l| l.trim_start().starts_with("nameserver"))
    {
        text.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    text
}

fn prepare(spec: &SandboxSpec, tty: bool) -> Result<Prepared, SandboxError> {
    validate(spec)?;
    let passwd = read_root_text(&spec.rootfs, "/etc/passwd")?;
    let group = read_root_text(&spec.rootfs, "/etc/group")?;
    let user =
        resolve_exec_user(&spec.user, passwd.as_deref(), group.as_deref()).map_err(|source| {
            SandboxError::User {
                user: spec.user.clone(),
                source,
            }
        })?;

    let mut env = spec.env.clone();
    if env_value(&env, "PATH").is_none() {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if env_value(&env, "HOME").is_none() {
        env.push(format!("HOME={}", user.home));
    }
    if tty && env_value(&env, "TERM").is_none() {
        env.push("TERM=xterm".to_string());
    }
    let path_var = env_value(&env, "PATH").unwrap_or(DEFAULT_PATH).to_string();

    // Only a mount point for the child's tmpfs: nothing is written into it on the host.
    fs::create_dir_all(&spec.scratch_dir).map_err(|source| SandboxError::Io {
        action: "create",
        path: spec.scratch_dir.clone(),
        source,
    })?;
    let etc_files = [
        ("hosts", hosts_file(spec)),
        ("hostname", format!("{}\n", spec.hostname)),
        ("resolv.conf", resolv_conf()),
    ];
    Ok(Prepared {
        user,
        env,
        path_var,
        etc_files,
    })
}

/// Every `/`-prefix of `path`, for a mkdir -p that chowns what it creates.
fn path_prefixes(path: &str) -> Result<Vec<CString>, PlanError> {
    let mut prefixes = Vec::new();
    let mut current = String::new();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return Err(PlanError::DotDotInWorkdir(path.to_string()));
        }
        current.push('/');
        current.push_str(part);
        prefixes.push(cstr(&current)?);
    }
    Ok(prefixes)
}

/// Builds the child's whole setup. See `docs/sandbox.md` for the order and its reasons.
fn build_plan(
    spec: &SandboxSpec,
    prepared: &Prepared,
    stdio: &ChildStdio,
    cgroup_procs: &[RawFd],
) -> Result<Plan, SandboxError> {
    build_plan_inner(spec, prepared, stdio, cgroup_procs).map_err(SandboxError::Plan)
}

/// Whether a masked or read-only `/proc` path can exist in the sandbox's fresh `/proc`: the same
/// kernel serves both, so a path this process's `/proc` lacks is left out of the plan instead of
/// costing a failing mount in every sandbox (e.g. `/proc/kcore`, `/proc/timer_stats` on many
/// kernels). Read once per process. Paths outside `/proc` are always tried: the host's `/sys` may be
/// absent or different where kiln runs, while the sandbox mounts a fresh sysfs.
fn proc_path_may_exist(path: &str) -> bool {
    static MISSING: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    let missing = MISSING.get_or_init(|| {
        MASKED_PATHS
            .iter()
            .map(|(path, _)| *path)
            .chain(READ_ONLY_PATHS)
            .filter(|path| path.starts_with("/proc/") && !Path::new(path).exists())
            .collect()
    });
    !missing.contains(&path)
}

fn build_plan_inner(
    spec: &SandboxSpec,
    prepared: &Prepared,
    stdio: &ChildStdio,
    cgroup_procs: &[RawFd],
) -> Result<Plan, PlanError> {
    let mount =
        |source: Option<&str>, target: &str, fstype: Option<&str>, flags, data: Option<&str>| {
            Ok::<_, PlanError>(Step::Mount {
                source: source.map(cstr).transpose()?,
                target: cstr(target)?,
                fstype: fstype.map(cstr).transpose()?,
                flags,
                data: data.map(cstr).transpose()?,
            })
        };
    let mut steps = vec![Step::SetParentDeathSignal, Step::ResetSignals, Step::Setsid];
    if let ChildStdio::Fds(fds) = stdio {
        for (to, from) in fds.iter().enumerate() {
            if let Some(from) = from {
                steps.push(Step::Dup2 {
                    from: *from,
                    to: to as RawFd,
                });
            }
        }
    }
    // One cgroup per hierarchy on cgroup v1 (memory, pids), one in all on v2.
    for &procs_fd in cgroup_procs {
        steps.push(Step::JoinCgroup { procs_fd });
    }

    // 1. Nothing we mount may propagate back to the host.
    steps.push(mount(
        None,
        "/",
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?);
    // 2. A tmpfs of this sandbox's own on the scratch dir (visible only in its mount namespace, gone
    //    with it): the generated /etc files, the overlay's stub layer and the root's mount point.
    //    Nothing is created or removed on the host's disk per run.
    let scratch = &spec.scratch_dir;
    steps.push(Step::Mount {
        source: Some(c"tmpfs".to_owned()),
        target: cpath(scratch)?,
        fstype: Some(c"tmpfs".to_owned()),
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: Some(cstr(&format!("mode=755,size={SCRATCH_SIZE}"))?),
    });
    let etc_dir = scratch.join("etc");
    steps.push(Step::Mkdir {
        path: cpath(&etc_dir)?,
        mode: 0o755,
    });
    for (name, contents) in &prepared.etc_files {
        steps.push(Step::WriteFile {
            path: cpath(&etc_dir.join(name))?,
            contents: contents.clone().into_bytes(),
        });
    }
    let rootfs = match &spec.rootfs {
        RootMount::Overlay {
            lower_dirs,
            upper_dir,
            work_dir,
            stubs,
        } => {
            let stub_dir = scratch.join("stubs");
            steps.push(plan::stub_layer_step(&stub_dir, stubs)?);
            let mut lower_dirs = lower_dirs.clone();
            lower_dirs.push(stub_dir);
            RootMount::Overlay {
                lower_dirs,
                upper_dir: upper_dir.clone(),
                work_dir: work_dir.clone(),
                stubs: Vec::new(),
            }
        }
        RootMount::Bind { .. } => spec.rootfs.clone(),
    };
    let root_dir = scratch.join("root");
    steps.push(Step::Mkdir {
        path: cpath(&root_dir)?,
        mode: 0o755,
    });
    // 3. The root; `nodev` so that a device node a command creates cannot be opened.
    let confined = !spec.confinement.privileged;
    match plan::root_mount_step(&rootfs, &root_dir)? {
        Step::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } if flags & libc::MS_BIND == 0 => steps.push(Step::Mount {
            source,
            target,
            fstype,
            flags: if confined {
                flags | libc::MS_NODEV
            } else {
                flags
            },
            data,
        }),
        step => {
            steps.push(step);
            if confined {
                steps.push(Step::SetMountAttributes {
                    target: cpath(&root_dir)?,
                    attributes: MOUNT_ATTR_NODEV,
                });
            }
        }
    }

    // 4. Bind sources are host paths: grab them as detached mounts while the host is still visible;
    //    they are attached after pivot_root, so targets resolve inside the container (an image's
    //    absolute symlink cannot point a mount at the host).
    enum Attach {
        Bind {
            slot: usize,
            target: PathBuf,
            read_only: bool,
        },
        Tmpfs {
            target: PathBuf,
            size_bytes: Option<u64>,
        },
        TmpfsWithOptions {
            target: PathBuf,
            flags: libc::c_ulong,
            data: String,
        },
    }
    let mut attaches = Vec::new();
    let mut slots = 0;
    let mut bind = |steps: &mut Vec<Step>,
                    source: &Path,
                    target: PathBuf,
                    read_only: bool|
     -> Result<Attach, PlanError> {
        steps.push(Step::OpenTree {
            source: cpath(source)?,
            slot: slots,
        });
        slots += 1;
        Ok(Attach::Bind {
            slot: slots - 1,
            target,
            read_only,
        })
    };
    for name in ["hosts", "hostname", "resolv.conf"] {
        let attach = bind(
            &mut steps,
            &etc_dir.join(name),
            Path::new("/etc").join(name),
            false,
        )?;
        attaches.push(attach);
    }
    for extra in &spec.mounts {
        let attach = match extra {
            ExtraMount::Bind {
                source,
                target,
                read_only,
            } => bind(&mut steps, source, target.clone(), *read_only)?,
            ExtraMount::Secret { source, target } => {
                bind(&mut steps, source, target.clone(), true)?
            }
            ExtraMount::Tmpfs { target, size_bytes } => Attach::Tmpfs {
                target: target.clone(),
                size_bytes: *size_bytes,
            },
            ExtraMount::TmpfsWithOptions {
                target,
                flags,
                data,
            } => Attach::TmpfsWithOptions {
                target: target.clone(),
                flags: *flags,
                data: data.clone(),
            },
        };
        attaches.push(attach);
    }
    // The host's device nodes, bound into the `nodev` /dev below: a bind mount of a node carries
    // the flags of the host's /dev mount, so these stay usable while nodes made in the sandbox do not.
    let mut device_slots = Vec::with_capacity(DEV_NODES.len());
    for name in DEV_NODES {
        steps.push(Step::OpenTree {
            source: cstr(&format!("/dev/{name}"))?,
            slot: slots,
        });
        device_slots.push((slots, name));
        slots += 1;
    }

    // 5. Switch root; the old root is detached entirely.
    steps.push(Step::Chdir(cpath(&root_dir)?));
    steps.extend([
        Step::PivotRoot,
        Step::DetachOldRoot,
        Step::Chdir(c"/".to_owned()),
    ]);

    // 6. Kernel filesystems and a minimal /dev.
    let nosuid_nodev_noexec = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    steps.push(mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        nosuid_nodev_noexec,
        None,
    )?);
    steps.push(mount(
        Some("sysfs"),
        "/sys",
        Some("sysfs"),
        nosuid_nodev_noexec | libc::MS_RDONLY,
        None,
    )?);
    let nodev_if_confined = if confined { libc::MS_NODEV } else { 0 };
    steps.push(mount(
        Some("tmpfs"),
        "/dev",
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_STRICTATIME | nodev_if_confined,
        Some(&format!("mode=755,size={DEV_SIZE}")),
    )?);
    steps.push(Step::MakeStubs(
        DEV_NODES
            .iter()
            .map(|name| {
                Ok(plan::StubEntry {
                    path: cstr(&format!("/dev/{name}"))?,
                    dir: false,
                })
            })
            .collect::<Result<_, PlanError>>()?,
    ));
    for (slot, name) in device_slots {
        steps.push(Step::MoveMount {
            slot,
            target: cstr(&format!("/dev/{name}"))?,
        });
    }
    steps.push(Step::Mkdir {
        path: c"/dev/pts".to_owned(),
        mode: 0o755,
    });
    steps.push(mount(
        Some("devpts"),
        "/dev/pts",
        Some("devpts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    )?);
    steps.push(Step::Symlink {
        target: c"pts/ptmx".to_owned(),
        link: c"/dev/ptmx".to_owned(),
    });
    steps.push(Step::Mkdir {
        path: c"/dev/shm".to_owned(),
        mode: 0o1777,
    });
    steps.push(mount(
        Some("shm"),
        "/dev/shm",
        Some("tmpfs"),
        nosuid_nodev_noexec,
        Some(&format!("mode=1777,size={DEV_SIZE}")),
    )?);
    for (link, target) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/core", "/proc/kcore"),
    ] {
        steps.push(Step::Symlink {
            target: cstr(target)?,
            link: cstr(link)?,
        });
    }

    // 6b. Docker's masked and read-only paths (after /dev, whose null hides masked files).
    if confined {
        for (path, kind) in MASKED_PATHS {
            if !proc_path_may_exist(path) {
                continue;
            }
            steps.push(Step::MaskPath {
                path: cstr(path)?,
                dir: kind == MaskKind::Dir,
            });
        }
        for path in READ_ONLY_PATHS {
            if !proc_path_may_exist(path) {
                continue;
            }
            steps.push(Step::ReadOnlyPath(cstr(path)?));
        }
    }

    // 7. /etc files and the caller's mounts, in order.
    for attach in attaches {
        match attach {
            Attach::Bind {
                slot,
                target,
                read_only,
            } => {
                let target = cpath(&target)?;
                steps.push(Step::MoveMount {
                    slot,
                    target: target.clone(),
                });
                // One mount_setattr for both: a host dir (a cache mount) must not let a node
                // made in it be opened either.
                let attributes = if read_only { MOUNT_ATTR_RDONLY } else { 0 }
                    | if confined { MOUNT_ATTR_NODEV } else { 0 };
                if attributes != 0 {
                    steps.push(Step::SetMountAttributes { target, attributes });
                }
            }
            Attach::Tmpfs { target, size_bytes } => {
                let data = size_bytes.map(|size| format!("size={size}"));
                steps.push(Step::Mount {
                    source: Some(c"tmpfs".to_owned()),
                    target: cpath(&target)?,
                    fstype: Some(c"tmpfs".to_owned()),
                    flags: libc::MS_NOSUID | libc::MS_NODEV,
                    data: data.as_deref().map(cstr).transpose()?,
                });
            }
            Attach::TmpfsWithOptions {
                target,
                flags,
                data,
            } => {
                steps.push(Step::Mount {
                    source: Some(c"tmpfs".to_owned()),
                    target: cpath(&target)?,
                    fstype: Some(c"tmpfs".to_owned()),
                    // Writable tmpfs is `nodev` whatever the caller asked (see Confinement).
                    flags: flags | nodev_if_confined,
                    data: (!data.is_empty()).then(|| cstr(&data)).transpose()?,
                });
            }
        }
    }

    // 8. Identity of the machine and the process.
    steps.push(Step::SetHostname(cstr(&spec.hostname)?));
    if spec.network == NetworkMode::None {
        steps.push(Step::LoopbackUp);
    }
    if let ChildStdio::Pty { socket } = stdio {
        steps.push(Step::Pty {
            ptmx: c"/dev/pts/ptmx".to_owned(),
            socket: *socket,
        });
    }
    let user = &prepared.user;
    steps.push(Step::MkdirAll {
        prefixes: path_prefixes(&spec.cwd)?,
        mode: 0o755,
        uid: user.uid,
        gid: user.gid,
    });
    steps.push(Step::Chdir(cstr(&spec.cwd)?));
    // Seccomp, bounding set, identity and capability sets, in runc's order (see the function).
    steps.extend(crate::confinement::identity_steps(
        &spec.confinement,
        user.uid,
        user.gid,
        &user.additional_gids,
    )?);
    steps.push(Step::CloexecFrom(3));
    if spec.init {
        crate::init::record_inherited_areas();
        // Last before the exec: PID 1 stays behind as the init, with the command's identity (as
        // Docker's docker-init, exec'd as the container's user), and the fork copies every fd.
        steps.push(Step::ForkInit {
            tty: matches!(stdio, ChildStdio::Pty { .. }),
        });
    }
    steps.push(Step::Exec(ExecArgs::new(
        &spec.args,
        &prepared.env,
        &prepared.path_var,
    )?));
    Ok(Plan { steps, slots })
}

fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd), SandboxError> {
    pipe2(OFlag::O_CLOEXEC).map_err(sys_err("create pipe"))
}

fn dev_null(write: bool) -> Result<OwnedFd, SandboxError> {
    let file = fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")
        .map_err(|source| SandboxError::Io {
            action: "open",
            path: "/dev/null".into(),
            source,
        })?;
    Ok(OwnedFd::from(file))
}

/// The parent's side of one output stream.
enum OutputRelay<'a> {
    None,
    Copy(fs::File, &'a mut (dyn Write + Send)),
    ToStdout(fs::File),
    /// Read and discard (a pty must be read or the command blocks).
    Drain(fs::File),
}

/// Child-side fd and parent-side relay for one output.
fn output_fds<'a>(output: Output<'a>) -> Result<(Option<OwnedFd>, OutputRelay<'a>), SandboxError> {
    match output {
        Output::Null => Ok((Some(dev_null(true)?), OutputRelay::None)),
        Output::Inherit => Ok((None, OutputRelay::None)),
        Output::Writer(writer) => {
            let (read, write) = cloexec_pipe()?;
            Ok((Some(write), OutputRelay::Copy(fs::File::from(read), writer)))
        }
    }
}

/// Copies until EOF (or EIO, which is how a pty master reports that the slave side closed).
fn pump(mut from: fs::File, to: &mut dyn Write) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                if to
                    .write_all(&buffer[..n])
                    .and_then(|()| to.flush())
                    .is_err()
                {
                    // The consumer is gone; keep draining so the command never blocks on a full pipe.
                    continue;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let _ = to.flush();
}

/// Relays every output to its destination from the calling thread until each reaches EOF (or EIO),
/// polling the pipes or pty master. A build runs many short commands, and on a busy machine starting
/// a thread per stream per command costs more than the command itself.
fn relay_outputs(relays: [OutputRelay<'_>; 2]) {
    let mut streams: Vec<(fs::File, Box<dyn Write + Send + '_>)> = Vec::with_capacity(2);
    for relay in relays {
        match relay {
            OutputRelay::None => {}
            OutputRelay::Copy(from, to) => streams.push((from, Box::new(to))),
            OutputRelay::ToStdout(from) => streams.push((from, Box::new(io::stdout()))),
            OutputRelay::Drain(from) => streams.push((from, Box::new(io::sink()))),
        }
    }
    let mut buffer = [0u8; 16 * 1024];
    while !streams.is_empty() {
        let mut fds: Vec<PollFd<'_>> = streams
            .iter()
            .map(|(from, _)| PollFd::new(from.as_fd(), PollFlags::POLLIN))
            .collect();
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => {
                // Cannot happen with valid fds; fall back to one thread per stream rather than risk
                // blocking on one pipe while the command blocks writing the other.
                std::thread::scope(|scope| {
                    for (from, mut to) in streams.drain(..) {
                        scope.spawn(move || pump(from, &mut to));
                    }
                });
                return;
            }
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|fd| fd.revents().is_some_and(|events| !events.is_empty()))
            .collect();
        drop(fds);
        let mut index = 0;
        streams.retain_mut(|(from, to)| {
            let is_ready = ready.get(index).copied().unwrap_or(false);
            index += 1;
            if !is_ready {
                return true;
            }
            match from.read(&mut buffer) {
                Ok(0) => false,
                Ok(n) => {
                    // A consumer that is gone is ignored: keep draining so the command never blocks
                    // on a full pipe.
                    let _ = to.write_all(&buffer[..n]).and_then(|()| to.flush());
                    true
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
                Err(_) => false,
            }
        });
    }
}

/// Feeds stdin from a background thread that is never joined: a reader may block forever (a terminal),
/// and the command may exit without reading.
fn feed(mut from: Box<dyn Read + Send>, to: fs::File) {
    std::thread::spawn(move || {
        let mut to = to;
        let _ = io::copy(&mut from, &mut to);
    });
}

static FORWARD_TO: AtomicI32 = AtomicI32::new(0);
/// A signal that arrived before the sandbox's pid was known (0: none), forwarded once it is.
static PENDING_SIGNAL: AtomicI32 = AtomicI32::new(0);
const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

extern "C" fn forward_signal(signal: libc::c_int) {
    // Park the signal first, then claim it back: either this handler sees the pid and one of it and
    // `SignalForwarding::start` forwards the signal, or it does not, and `start` (which publishes the
    // pid before it claims) finds it parked.
    PENDING_SIGNAL.store(signal, Ordering::SeqCst);
    let pid = FORWARD_TO.load(Ordering::SeqCst);
    if pid > 0 {
        let parked = PENDING_SIGNAL.swap(0, Ordering::SeqCst);
        if parked != 0 {
            // SAFETY: kill is async-signal-safe.
            unsafe { libc::kill(pid, parked) };
        }
    }
}

/// The forwarding handlers while installed; dropping it restores the previous ones.
struct SignalForwarding {
    previous: Vec<(Signal, SigAction)>,
}

impl SignalForwarding {
    /// Installs the handlers. Done before the clone: a signal that arrives once the command runs but
    /// before its pid is published must reach it, not kill us with the default action.
    fn install() -> Result<SignalForwarding, SandboxError> {
        FORWARD_TO.store(0, Ordering::SeqCst);
        PENDING_SIGNAL.store(0, Ordering::SeqCst);
        let action = SigAction::new(
            SigHandler::Handler(forward_signal),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        let mut forwarding = SignalForwarding {
            previous: Vec::with_capacity(FORWARDED.len()),
        };
        for signal in FORWARDED {
            // SAFETY: the handler only touches atomics and calls kill.
            let old =
                unsafe { sigaction(signal, &action) }.map_err(sys_err("install signal handler"))?;
            forwarding.previous.push((signal, old));
        }
        Ok(forwarding)
    }

    /// Forwards to `pid` from now on, and any signal that arrived before.
    fn start(&self, pid: Pid) {
        FORWARD_TO.store(pid.as_raw(), Ordering::SeqCst);
        let parked = PENDING_SIGNAL.swap(0, Ordering::SeqCst);
        if parked != 0 {
            // SAFETY: kill is async-signal-safe (and fine outside a handler too).
            unsafe { libc::kill(pid.as_raw(), parked) };
        }
    }
}

impl Drop for SignalForwarding {
    fn drop(&mut self) {
        for (signal, action) in self.previous.drain(..) {
            // SAFETY: restoring what was installed before.
            let _ = unsafe { sigaction(signal, &action) };
        }
        FORWARD_TO.store(0, Ordering::SeqCst);
        PENDING_SIGNAL.store(0, Ordering::SeqCst);
    }
}

/// This thread's signal mask with every signal blocked; dropping it restores the previous mask.
struct BlockedSignals {
    previous: SigSet,
}

impl BlockedSignals {
    fn block_all() -> Result<BlockedSignals, SandboxError> {
        let mut previous = SigSet::empty();
        nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&SigSet::all()),
            Some(&mut previous),
        )
        .map_err(sys_err("block signals"))?;
        Ok(BlockedSignals { previous })
    }
}

impl Drop for BlockedSignals {
    fn drop(&mut self) {
        let _ = nix::sys::signal::pthread_sigmask(
            nix::sys::signal::SigmaskHow::SIG_SETMASK,
            Some(&self.previous),
            None,
        );
    }
}

fn wait_for(pid: Pid) -> Result<ExitStatus, SandboxError> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(ExitStatus::Exited(code)),
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                return Ok(ExitStatus::Signaled(signal as i32));
            }
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(errno) => {
                return Err(SandboxError::Sys {
                    action: "wait for the sandbox",
                    source: errno,
                });
            }
        }
    }
}

/// Reads the child's setup report: `None` when the pipe closed without one (the exec succeeded).
fn read_setup_failure(pipe: OwnedFd) -> Option<StepFailure> {
    let mut file = fs::File::from(pipe);
    let mut report = [0u8; 8];
    let mut filled = 0;
    while filled < report.len() {
        match file.read(&mut report[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    (filled == report.len()).then(|| {
        let index = u32::from_ne_bytes([report[0], report[1], report[2], report[3]]) as usize;
        let errno = i32::from_ne_bytes([report[4], report[5], report[6], report[7]]);
        StepFailure {
            index,
            errno: Errno::from_raw(errno),
        }
    })
}

/// Receives the fd the other end sent over `socket` with `SCM_RIGHTS` (the pty master). Shared
/// with `kiln exec` ([`crate::enter`]); on failure, what was being done and the errno, for the
/// caller's own error type.
pub(crate) fn receive_fd(socket: &OwnedFd) -> Result<OwnedFd, (&'static str, Errno)> {
    let mut payload = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut payload)];
    let mut control = nix::cmsg_space!(RawFd);
    let message = recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut control),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|errno| ("receive the terminal", errno))?;
    for cmsg in message
        .cmsgs()
        .map_err(|errno| ("read the terminal message", errno))?
    {
        if let ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(fd) = fds.first()
        {
            // SAFETY: the kernel just installed this fd for us.
            return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
        }
    }
    Err(("receive the terminal", Errno::EBADMSG))
}

/// Copies the caller's terminal size to the pty, when the caller has a terminal.
fn copy_window_size(master: &OwnedFd) {
    // SAFETY: ioctls with a stack winsize on fds we hold.
    unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        if libc::ioctl(0, libc::TIOCGWINSZ, &mut size) == 0 {
            libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size);
        }
    }
}

/// The container's pty master while [`WindowResizing`] is installed (-1: none).
static RESIZE_MASTER: AtomicI32 = AtomicI32::new(-1);

extern "C" fn copy_window_size_on_winch(_signal: libc::c_int) {
    let master = RESIZE_MASTER.load(Ordering::SeqCst);
    if master >= 0 {
        // SAFETY: ioctl is async-signal-safe; the fd stays open while it is published (see Drop).
        unsafe {
            let mut size: libc::winsize = std::mem::zeroed();
            if libc::ioctl(0, libc::TIOCGWINSZ, &mut size) == 0 {
                libc::ioctl(master, libc::TIOCSWINSZ, &size);
            }
        }
    }
}

/// Copies the caller's terminal size to the container's on every SIGWINCH while installed (the
/// container's kernel then sends SIGWINCH to its foreground process group, as with `docker run
/// -t`); dropping it restores the previous handler.
struct WindowResizing {
    /// Our own copy of the master, so the fd the handler uses cannot close or be reused under it
    /// (closed after `Drop::drop` has unpublished it).
    _master: OwnedFd,
    previous: SigAction,
}

impl WindowResizing {
    fn install(master: &OwnedFd) -> Result<WindowResizing, SandboxError> {
        let master = master.try_clone().map_err(|source| SandboxError::Io {
            action: "duplicate",
            path: "pty master".into(),
            source,
        })?;
        RESIZE_MASTER.store(master.as_raw_fd(), Ordering::SeqCst);
        let action = SigAction::new(
            SigHandler::Handler(copy_window_size_on_winch),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        // SAFETY: the handler only reads an atomic and makes two ioctls.
        match unsafe { sigaction(Signal::SIGWINCH, &action) } {
            Ok(previous) => Ok(WindowResizing {
                _master: master,
                previous,
            }),
            Err(errno) => {
                RESIZE_MASTER.store(-1, Ordering::SeqCst);
                Err(SandboxError::Sys {
                    action: "install the SIGWINCH handler",
                    source: errno,
                })
            }
        }
    }
}

impl Drop for WindowResizing {
    fn drop(&mut self) {
        // SAFETY: restoring what was installed before.
        let _ = unsafe { sigaction(Signal::SIGWINCH, &self.previous) };
        RESIZE_MASTER.store(-1, Ordering::SeqCst);
    }
}

/// Runs `spec.args` in a sandbox and waits for it. Output streams to `io` while it runs. Blocks the
/// calling thread (call it from `spawn_blocking` in async code); needs root (CAP_SYS_ADMIN).
///
/// Typical use: `stubs = mount_stubs(&mounts)`, `snapshot = snapshotter.prepare(&layers, scratch,
/// &stubs)`, `spec.rootfs = snapshot.mount().clone()`, `run(&spec, io)`, then `snapshotter.diff(&snapshot)`.
///
/// # Errors
/// An invalid spec, a user that does not resolve, a failed setup step (the message names it), a
/// command not found in PATH, or a failing pipe/clone/wait. A command that runs and fails is *not* an
/// error: see the returned [`ExitStatus`].
pub fn run(spec: &SandboxSpec, io: SandboxIo<'_>) -> Result<ExitStatus, SandboxError> {
    let SandboxIo {
        stdin,
        stdout,
        stderr,
        tty,
        forward_signals,
        on_started,
    } = io;
    let prepared = prepare(spec, tty)?;

    // Keep every child-side fd alive until clone; they close in the parent right after.
    let mut child_side: Vec<OwnedFd> = Vec::new();
    let (error_read, error_write) = cloexec_pipe()?;
    let mut pty_socket = None;
    let mut stdin_feed = None;
    let mut tty_output = None;
    let mut tty_stdin = None;
    let (stdio, out_relay, err_relay) = if tty {
        let (parent, child) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(sys_err("create socketpair"))?;
        let stdio = ChildStdio::Pty {
            socket: child.as_raw_fd(),
        };
        child_side.push(child);
        pty_socket = Some(parent);
        tty_output = Some(stdout);
        tty_stdin = Some(stdin);
        (stdio, OutputRelay::None, OutputRelay::None)
    } else {
        let stdin_fd = match stdin {
            Input::Null => Some(dev_null(false)?),
            Input::Inherit => None,
            Input::Reader(reader) => {
                let (read, write) = cloexec_pipe()?;
                stdin_feed = Some((reader, fs::File::from(write)));
                Some(read)
            }
        };
        let (stdout_fd, out_relay) = output_fds(stdout)?;
        let (stderr_fd, err_relay) = output_fds(stderr)?;
        let raw = [&stdin_fd, &stdout_fd, &stderr_fd].map(|fd| fd.as_ref().map(AsRawFd::as_raw_fd));
        child_side.extend([stdin_fd, stdout_fd, stderr_fd].into_iter().flatten());
        (ChildStdio::Fds(raw), out_relay, err_relay)
    };

    // Removed on drop, on every return below too (the child is waited for first).
    let cgroup = SandboxCgroup::for_limits(&spec.limits)?;

    let plan = build_plan(
        spec,
        &prepared,
        &stdio,
        &cgroup
            .as_ref()
            .map(SandboxCgroup::procs_fds)
            .unwrap_or_default(),
    )?;
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if spec.network == NetworkMode::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let mut slots: Vec<RawFd> = vec![-1; plan.slots];
    let mut stack = vec![0u8; CHILD_STACK_SIZE];
    let error_fd = error_write.as_raw_fd();
    let steps = &plan.steps;
    let child_main = Box::new(move || -> isize {
        // Only raw syscalls from here to execve: see the module doc.
        if let Err(failure) = plan::execute(steps, &LinuxSyscall, &mut slots) {
            let mut report = [0u8; 8];
            report[..4].copy_from_slice(&(failure.index as u32).to_ne_bytes());
            report[4..].copy_from_slice(&(failure.errno as i32).to_ne_bytes());
            // SAFETY: write and _exit are async-signal-safe.
            unsafe {
                libc::write(error_fd, report.as_ptr().cast(), report.len());
                libc::_exit(127);
            }
        }
        // execute() only returns Ok after a successful exec, which does not return.
        // SAFETY: as above.
        unsafe { libc::_exit(127) }
    });
    let forwarding = if forward_signals {
        Some(SignalForwarding::install()?)
    } else {
        None
    };
    // CLONE_VM | CLONE_VFORK, as posix_spawn does: the child borrows our memory until it execs
    // instead of getting a copy of every page table of this (large, multi-threaded) process, and this
    // thread waits meanwhile, so `steps`, `slots` and the stack stay put. Signals stay blocked across
    // the clone so that no handler of ours can run on the child's side before it resets them all.
    // With --init, PID 1 never execs: it must not borrow our memory or keep us suspended, so it
    // gets a copy instead (as fork does).
    if !spec.init {
        flags |= CloneFlags::CLONE_VM | CloneFlags::CLONE_VFORK;
    }
    let blocked = BlockedSignals::block_all()?;
    // SAFETY: the child runs only the allocation-free plan executor (see the module doc), on its own
    // stack; with CLONE_VFORK nothing here runs until it has exec'd or exited, and without it (--init)
    // the child works on its own copy of our memory.
    let cloned = unsafe { nix::sched::clone(child_main, &mut stack, flags, Some(libc::SIGCHLD)) };
    drop(blocked);
    let pid = cloned.map_err(sys_err("clone the sandbox process"))?;
    if let Some(forwarding) = &forwarding {
        forwarding.start(pid);
    }
    drop(child_side);
    drop(error_write);

    if let Some(failure) = read_setup_failure(error_read) {
        let _ = wait_for(pid);
        let step = plan.steps.get(failure.index);
        return Err(match step {
            Some(Step::Exec(args)) if failure.errno == Errno::ENOENT => {
                SandboxError::CommandNotFound {
                    command: args.program(),
                }
            }
            _ => SandboxError::Setup {
                step: step.map_or_else(|| format!("step {}", failure.index), ToString::to_string),
                errno: failure.errno,
            },
        });
    }
    if let Some(started) = on_started {
        started(pid.as_raw());
    }

    let mut out_relay = out_relay;
    let mut resizing = None;
    if let Some(socket) = &pty_socket {
        let master =
            receive_fd(socket).map_err(|(action, source)| SandboxError::Sys { action, source })?;
        copy_window_size(&master);
        if forward_signals {
            resizing = Some(WindowResizing::install(&master)?);
        }
        let master = fs::File::from(master);
        let writer_side = master.try_clone().map_err(|source| SandboxError::Io {
            action: "duplicate",
            path: "pty master".into(),
            source,
        })?;
        match tty_stdin {
            Some(Input::Reader(reader)) => feed(reader, writer_side),
            Some(Input::Inherit) => feed(Box::new(io::stdin()), writer_side),
            _ => drop(writer_side),
        }
        out_relay = match tty_output.take() {
            Some(Output::Writer(writer)) => OutputRelay::Copy(master, writer),
            Some(Output::Inherit) => OutputRelay::ToStdout(master),
            _ => OutputRelay::Drain(master),
        };
    }
    if let Some((reader, pipe)) = stdin_feed {
        feed(reader, pipe);
    }

    // The sandbox is a PID namespace: when its init exits every process in it dies, so the outputs
    // reach EOF no later than the command's exit and relaying them first cannot block the wait.
    relay_outputs([out_relay, err_relay]);
    let status = wait_for(pid);
    drop(resizing);
    drop(forwarding);
    let status = match &cgroup {
        Some(cgroup) => status.map(|status| cgroup.exit_status(status)),
        None => status,
    };
    drop(cgroup);
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confinement::{CapabilitySet, host_capabilities};
    use crate::syscall::RecordingSyscall;

    /// A spec over plain dirs (no root needed to *build* and record the plan).
    fn spec_in(tmp: &Path) -> SandboxSpec {
        let lower = tmp.join("lower");
        fs::create_dir_all(lower.join("etc")).unwrap();
        fs::write(
            lower.join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(lower.join("etc/group"), "app:x:1000:\nstaff:x:50:app\n").unwrap();
        let rootfs = RootMount::Overlay {
            lower_dirs: vec![lower],
            upper_dir: "/s/upper".into(),
            work_dir: "/s/work".into(),
            stubs: mount_stubs(&[ExtraMount::Tmpfs {
                target: "/tmp".into(),
                size_bytes: None,
            }]),
        };
        let mut spec = SandboxSpec::new(
            rootfs,
            tmp.join("sandbox"),
            vec!["make".into(), "all".into()],
        );
        spec.env = vec!["PATH=/usr/bin:/bin".into()];
        spec.cwd = "/src/app".into();
        spec.user = "app".into();
        spec.hostname = "box".into();
        spec.network = NetworkMode::None;
        spec.mounts = vec![
            ExtraMount::Bind {
                source: "/host/cache".into(),
                target: "/cache".into(),
                read_only: true,
            },
            ExtraMount::Tmpfs {
                target: "/tmp".into(),
                size_bytes: Some(1024),
            },
            ExtraMount::Secret {
                source: "/host/secret".into(),
                target: "/run/secrets/id".into(),
            },
        ];
        spec
    }

    #[test]
    fn recorded_setup_is_the_documented_sequence() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = spec_in(tmp.path());
        let prepared = prepare(&spec, false).unwrap();
        let plan = build_plan(
            &spec,
            &prepared,
            &ChildStdio::Fds([Some(3), Some(4), Some(5)]),
            &[],
        )
        .unwrap();
        let sys = RecordingSyscall::new();
        let mut slots = vec![-1; plan.slots];
        plan::execute(&plan.steps, &sys, &mut slots).unwrap();
        let scratch = tmp.path().join("sandbox");
        let lower = tmp.path().join("lower");
        let s = scratch.display();
        let expected = vec![
            "set_parent_death_signal".to_string(),
            "reset_signals".into(),
            "setsid".into(),
            "dup2 3 0".into(),
            "dup2 4 1".into(),
            "dup2 5 2".into(),
            "mount - / - MS_REC|MS_PRIVATE -".into(),
            format!("mount tmpfs {s} tmpfs MS_NOSUID|MS_NODEV|MS_NOEXEC mode=755,size=16m"),
            format!("mkdir {s}/etc 755"),
            format!("write_file {s}/etc/hosts \"127.0.0.1\\tlocalhost box\\n::1\\tlocalhost ip6-localhost ip6-loopback\\n\""),
            format!("write_file {s}/etc/hostname \"box\\n\""),
            format!("write_file {s}/etc/resolv.conf {:?}", resolv_conf()),
            format!("mkdir {s}/stubs 755"),
            format!("mkdir {s}/stubs/proc 755"),
            format!("mkdir {s}/stubs/sys 755"),
            format!("mkdir {s}/stubs/dev 755"),
            format!("mkdir {s}/stubs/etc 755"),
            format!("mknod {s}/stubs/etc/hosts 100644 0:0"),
            format!("mknod {s}/stubs/etc/hostname 100644 0:0"),
            format!("mknod {s}/stubs/etc/resolv.conf 100644 0:0"),
            format!("mkdir {s}/stubs/tmp 755"),
            format!("mkdir {s}/root 755"),
            format!(
                "mount overlay {s}/root overlay MS_NODEV lowerdir={}:{s}/stubs,upperdir=/s/upper,workdir=/s/work,index=off,metacopy=off,redirect_dir=off",
                lower.display()
            ),
            format!("open_tree {s}/etc/hosts = 100"),
            format!("open_tree {s}/etc/hostname = 101"),
            format!("open_tree {s}/etc/resolv.conf = 102"),
            "open_tree /host/cache = 103".into(),
            "open_tree /host/secret = 104".into(),
            "open_tree /dev/null = 105".into(),
            "open_tree /dev/zero = 106".into(),
            "open_tree /dev/full = 107".into(),
            "open_tree /dev/random = 108".into(),
            "open_tree /dev/urandom = 109".into(),
            "open_tree /dev/tty = 110".into(),
            format!("chdir {s}/root"),
            "pivot_root . .".into(),
            "umount_detach .".into(),
            "chdir /".into(),
            "mount proc /proc proc MS_NOSUID|MS_NODEV|MS_NOEXEC -".into(),
            "mount sysfs /sys sysfs MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC -".into(),
            "mount tmpfs /dev tmpfs MS_NOSUID|MS_NODEV|MS_STRICTATIME mode=755,size=65536k".into(),
            "mknod /dev/null 100644 0:0".into(),
            "mknod /dev/zero 100644 0:0".into(),
            "mknod /dev/full 100644 0:0".into(),
            "mknod /dev/random 100644 0:0".into(),
            "mknod /dev/urandom 100644 0:0".into(),
            "mknod /dev/tty 100644 0:0".into(),
            "move_mount 105 /dev/null".into(),
            "close 105".into(),
            "move_mount 106 /dev/zero".into(),
            "close 106".into(),
            "move_mount 107 /dev/full".into(),
            "close 107".into(),
            "move_mount 108 /dev/random".into(),
            "close 108".into(),
            "move_mount 109 /dev/urandom".into(),
            "close 109".into(),
            "move_mount 110 /dev/tty".into(),
            "close 110".into(),
            "mkdir /dev/pts 755".into(),
            "mount devpts /dev/pts devpts MS_NOSUID|MS_NOEXEC newinstance,ptmxmode=0666,mode=0620,gid=5".into(),
            "symlink /dev/ptmx -> pts/ptmx".into(),
            "mkdir /dev/shm 1777".into(),
            "mount shm /dev/shm tmpfs MS_NOSUID|MS_NODEV|MS_NOEXEC mode=1777,size=65536k".into(),
            "symlink /dev/fd -> /proc/self/fd".into(),
            "symlink /dev/stdin -> /proc/self/fd/0".into(),
            "symlink /dev/stdout -> /proc/self/fd/1".into(),
            "symlink /dev/stderr -> /proc/self/fd/2".into(),
            "symlink /dev/core -> /proc/kcore".into(),
            "mount tmpfs /proc/acpi tmpfs MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC -".into(),
            "mount tmpfs /proc/asound tmpfs MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC -".into(),
            "mount /dev/null /proc/kcore - MS_BIND -".into(),
            "mount /dev/null /proc/keys - MS_BIND -".into(),
            "mount /dev/null /proc/latency_stats - MS_BIND -".into(),
            "mount /dev/null /proc/timer_list - MS_BIND -".into(),
            "mount /dev/null /proc/timer_stats - MS_BIND -".into(),
            "mount /dev/null /proc/sched_debug - MS_BIND -".into(),
            "mount tmpfs /proc/scsi tmpfs MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC -".into(),
            "mount tmpfs /sys/firmware tmpfs MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC -".into(),
            "mount tmpfs /sys/devices/virtual/powercap tmpfs MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC -".into(),
            "mount /proc/bus /proc/bus - MS_BIND|MS_REC -".into(),
            "mount_setattr /proc/bus rdonly".into(),
            "mount /proc/fs /proc/fs - MS_BIND|MS_REC -".into(),
            "mount_setattr /proc/fs rdonly".into(),
            "mount /proc/irq /proc/irq - MS_BIND|MS_REC -".into(),
            "mount_setattr /proc/irq rdonly".into(),
            "mount /proc/sys /proc/sys - MS_BIND|MS_REC -".into(),
            "mount_setattr /proc/sys rdonly".into(),
            "mount /proc/sysrq-trigger /proc/sysrq-trigger - MS_BIND|MS_REC -".into(),
            "mount_setattr /proc/sysrq-trigger rdonly".into(),
            "move_mount 100 /etc/hosts".into(),
            "close 100".into(),
            "mount_setattr /etc/hosts nodev".into(),
            "move_mount 101 /etc/hostname".into(),
            "close 101".into(),
            "mount_setattr /etc/hostname nodev".into(),
            "move_mount 102 /etc/resolv.conf".into(),
            "close 102".into(),
            "mount_setattr /etc/resolv.conf nodev".into(),
            "move_mount 103 /cache".into(),
            "close 103".into(),
            "mount_setattr /cache rdonly|nodev".into(),
            "mount tmpfs /tmp tmpfs MS_NOSUID|MS_NODEV size=1024".into(),
            "move_mount 104 /run/secrets/id".into(),
            "close 104".into(),
            "mount_setattr /run/secrets/id rdonly|nodev".into(),
            "sethostname box".into(),
            "loopback_up".into(),
            "mkdir /src 755".into(),
            "lchown /src 1000:1000".into(),
            "mkdir /src/app 755".into(),
            "lchown /src/app 1000:1000".into(),
            "chdir /src/app".into(),
            "seccomp_default".into(),
            "capbset_drop_all_but the default".into(),
            "setgroups [1000, 50]".into(),
            "setresgid 1000".into(),
            "setresuid 1000".into(),
            // A non-root user keeps no capability, as in Docker.
            "capset eff=0x0 prm=0x0 inh=0x0".into(),
            "ambient_clear".into(),
            "cloexec_from 3".into(),
            r#"execve /usr/bin/make ["make", "all"] ["PATH=/usr/bin:/bin", "HOME=/home/app"]"#.into(),
        ];
        // The bounding set loses every capability but Docker's 14, one prctl each.
        let host = host_capabilities();
        let kept = CapabilitySet::docker_default().bits() & host.permitted.bits();
        let expected: Vec<String> = expected
            .into_iter()
            .flat_map(|line| {
                if line.starts_with("capbset_drop_all_but") {
                    (0..=host.last)
                        .filter(|n| kept & (1 << n) == 0)
                        .map(|n| format!("capbset_drop {n}"))
                        .collect()
                } else if line == "seccomp_default" {
                    // Docker's default profile, where the architecture has one.
                    crate::seccomp::default_program(CapabilitySet::docker_default())
                        .unwrap()
                        .map(|p| format!("seccomp {} instructions", p.instructions().len()))
                        .into_iter()
                        .collect()
                } else {
                    vec![line]
                }
            })
            .collect();
        // Masked and read-only /proc paths this kernel lacks are left out of the plan.
        let skipped = |call: &String| {
            (call.starts_with("mount ") || call.starts_with("mount_setattr "))
                && call
                    .split_whitespace()
                    .any(|word| word.starts_with("/proc/") && !proc_path_may_exist(word))
        };
        let expected: Vec<String> = expected.into_iter().filter(|c| !skipped(c)).collect();
        assert_eq!(sys.calls(), expected);
        assert_eq!(
            fs::read_dir(&scratch).unwrap().count(),
            0,
            "nothing is written on the host: the child makes it all in its own tmpfs"
        );
    }

    #[test]
    fn pty_setup_replaces_stdio_dups() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spec = spec_in(tmp.path());
        spec.mounts.clear();
        spec.network = NetworkMode::Host;
        let prepared = prepare(&spec, true).unwrap();
        let plan = build_plan(&spec, &prepared, &ChildStdio::Pty { socket: 9 }, &[12, 13]).unwrap();
        let sys = RecordingSyscall::new();
        plan::execute(&plan.steps, &sys, &mut vec![-1; plan.slots]).unwrap();
        let calls = sys.calls();
        assert!(!calls.iter().any(|c| c.starts_with("loopback_up")));
        assert_eq!(
            calls[3..5],
            ["write 12 \"0\"", "write 13 \"0\""],
            "joins every cgroup (one per v1 hierarchy) before anything else"
        );
        let pty_at = calls
            .iter()
            .position(|c| c.starts_with("open_pty"))
            .unwrap();
        assert_eq!(
            &calls[pty_at..pty_at + 7],
            [
                "open_pty /dev/pts/ptmx = 109,110",
                "send_fd 9 109",
                "close 109",
                "set_controlling_tty 110",
                "dup2 110 0",
                "dup2 110 1",
                "dup2 110 2",
            ]
        );
        assert!(calls.last().unwrap().contains("TERM=xterm"));
        assert!(
            calls
                .iter()
                .position(|c| c.starts_with("mount devpts"))
                .unwrap()
                < pty_at
        );
    }

    #[test]
    fn init_forks_last_before_the_exec_and_tmpfs_options_reach_the_mount() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spec = spec_in(tmp.path());
        spec.init = true;
        spec.mounts = vec![ExtraMount::TmpfsWithOptions {
            target: "/tmp".into(),
            flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY,
            data: "size=1024,mode=700".into(),
        }];
        let prepared = prepare(&spec, false).unwrap();
        let plan = build_plan(&spec, &prepared, &ChildStdio::Fds([None; 3]), &[]).unwrap();
        let sys = RecordingSyscall::new();
        plan::execute(&plan.steps, &sys, &mut vec![-1; plan.slots]).unwrap();
        let calls = sys.calls();
        assert!(
            calls.contains(
                &"mount tmpfs /tmp tmpfs MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC size=1024,mode=700"
                    .to_string()
            )
        );
        let n = calls.len();
        assert_eq!(
            calls[n - 6..n - 1],
            [
                "setresuid 1000",
                "capset eff=0x0 prm=0x0 inh=0x0",
                "ambient_clear",
                "cloexec_from 3",
                "fork_init tty=false"
            ]
        );
        assert!(calls[n - 1].starts_with("execve /usr/bin/make"));

        let prepared = prepare(&spec, true).unwrap();
        let plan = build_plan(&spec, &prepared, &ChildStdio::Pty { socket: 9 }, &[]).unwrap();
        let sys = RecordingSyscall::new();
        plan::execute(&plan.steps, &sys, &mut vec![-1; plan.slots]).unwrap();
        assert!(sys.calls().contains(&"fork_init tty=true".to_string()));

        spec.init = false;
        let plan = build_plan(&spec, &prepared, &ChildStdio::Fds([None; 3]), &[]).unwrap();
        assert!(
            !plan
                .steps
                .iter()
                .any(|s| matches!(s, Step::ForkInit { .. }))
        );
    }

    #[test]
    fn root_keeps_its_capabilities_and_privileged_skips_confinement() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spec = spec_in(tmp.path());
        spec.user = String::new();
        spec.mounts = vec![ExtraMount::TmpfsWithOptions {
            target: "/tmp".into(),
            flags: libc::MS_NOSUID,
            data: String::new(),
        }];
        let calls = |spec: &SandboxSpec| {
            let prepared = prepare(spec, false).unwrap();
            let plan = build_plan(spec, &prepared, &ChildStdio::Fds([None; 3]), &[]).unwrap();
            let sys = RecordingSyscall::new();
            plan::execute(&plan.steps, &sys, &mut vec![-1; plan.slots]).unwrap();
            sys.calls()
        };
        let kept = CapabilitySet::docker_default().bits() & host_capabilities().permitted.bits();
        let confined = calls(&spec);
        let uid_at = confined.iter().position(|c| c == "setresuid 0").unwrap();
        assert_eq!(
            confined[uid_at + 1],
            format!("capset eff={kept:#x} prm={kept:#x} inh=0x0")
        );
        // A tmpfs is `nodev` even when its options leave it out.
        assert!(confined.contains(&"mount tmpfs /tmp tmpfs MS_NOSUID|MS_NODEV -".to_string()));

        spec.confinement = Confinement::privileged();
        let privileged = calls(&spec);
        for absent in [
            "capbset_drop",
            "capset",
            "mount_setattr",
            "mount /dev/null /proc",
        ] {
            assert!(
                !privileged.iter().any(|c| c.starts_with(absent)),
                "{absent} in {privileged:#?}"
            );
        }
        assert!(privileged.contains(&"mount tmpfs /tmp tmpfs MS_NOSUID -".to_string()));
        assert!(
            privileged
                .iter()
                .any(|c| c.starts_with("mount tmpfs /dev tmpfs MS_NOSUID|MS_STRICTATIME "))
        );
    }

    #[test]
    fn seccomp_follows_the_last_mount_and_precedes_the_identity() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spec = spec_in(tmp.path());
        spec.user = "1000".into();
        let calls = |spec: &SandboxSpec| {
            let prepared = prepare(spec, false).unwrap();
            let plan = build_plan(spec, &prepared, &ChildStdio::Fds([None; 3]), &[]).unwrap();
            let sys = RecordingSyscall::new();
            plan::execute(&plan.steps, &sys, &mut vec![-1; plan.slots]).unwrap();
            sys.calls()
        };
        if crate::seccomp::default_program(spec.confinement.capabilities)
            .unwrap()
            .is_none()
        {
            return; // an architecture without a filter: nothing to order
        }
        let confined = calls(&spec);
        let at = |prefix: &str| confined.iter().position(|c| c.starts_with(prefix));
        let last = |prefix: &str| confined.iter().rposition(|c| c.starts_with(prefix));
        let seccomp = at("seccomp ").expect("a seccomp step");
        // Everything the filter denies happens before it...
        for denied in ["mount", "pivot_root", "umount_detach", "sethostname"] {
            assert!(last(denied).unwrap() < seccomp, "{denied} after seccomp");
        }
        // ...and it comes while CAP_SYS_ADMIN is still there: before setuid and capset.
        for later in ["capbset_drop", "setresuid", "capset"] {
            assert!(at(later).unwrap() > seccomp, "{later} before seccomp");
        }

        spec.confinement.seccomp = false;
        assert!(!calls(&spec).iter().any(|c| c.starts_with("seccomp ")));
        spec.confinement = Confinement::privileged();
        assert!(!calls(&spec).iter().any(|c| c.starts_with("seccomp ")));
    }

    #[test]
    fn extra_hosts_follow_the_defaults_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spec = spec_in(tmp.path());
        spec.extra_hosts = vec![
            ("db".into(), "10.0.0.5".into()),
            ("v6".into(), "fd00::1".into()),
        ];
        assert_eq!(
            hosts_file(&spec),
            "127.0.0.1\tlocalhost box\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             10.0.0.5\tdb\nfd00::1\tv6\n"
        );
    }

    #[test]
    fn invalid_specs_are_rejected_before_anything_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let mut spec = spec_in(tmp.path());
        spec.cwd = "relative".into();
        assert!(matches!(
            prepare(&spec, false),
            Err(SandboxError::InvalidSpec(_))
        ));
        let mut spec = spec_in(tmp.path());
        spec.args.clear();
        assert!(matches!(
            prepare(&spec, false),
            Err(SandboxError::InvalidSpec(_))
        ));
        let mut spec = spec_in(tmp.path());
        spec.user = "ghost".into();
        assert!(matches!(
            prepare(&spec, false),
            Err(SandboxError::User { .. })
        ));
        assert_eq!(
            path_prefixes("/a/./b/").unwrap(),
            [c"/a".to_owned(), c"/a/b".to_owned()]
        );
        assert!(path_prefixes("/a/../b").is_err());
    }

    #[test]
    fn mount_stubs_cover_every_target() {
        let stubs = mount_stubs(&[
            ExtraMount::Bind {
                source: "/".into(),
                target: "/host".into(),
                read_only: true,
            },
            ExtraMount::Secret {
                source: "/nonexistent".into(),
                target: "/run/secrets/a".into(),
            },
        ]);
        let paths: Vec<_> = stubs
            .iter()
            .map(|s| (s.path.to_string_lossy().into_owned(), s.kind))
            .collect();
        assert!(paths.contains(&("/host".into(), StubKind::Dir)));
        assert!(paths.contains(&("/run/secrets/a".into(), StubKind::File)));
        assert!(paths.contains(&("/etc/hosts".into(), StubKind::File)));
        assert!(paths.contains(&("/proc".into(), StubKind::Dir)));
    }

    #[test]
    fn line_callback_splits_lines() {
        let mut lines = Vec::new();
        let mut writer =
            LineCallback::new(|l: &[u8]| lines.push(String::from_utf8_lossy(l).into_owned()));
        writer.write_all(b"a\nb").unwrap();
        writer.write_all(b"c\n\nd").unwrap();
        writer.flush().unwrap();
        drop(writer);
        assert_eq!(lines, ["a", "bc", "", "d"]);
    }

    #[test]
    fn masks_are_planned_only_for_proc_paths_this_kernel_has() {
        assert!(proc_path_may_exist("/proc/sys"));
        // Outside /proc the host's view says nothing about the sandbox's fresh sysfs.
        assert!(proc_path_may_exist("/sys/devices/virtual/powercap"));
        for (path, _) in MASKED_PATHS {
            if path.starts_with("/proc/") {
                assert_eq!(
                    proc_path_may_exist(path),
                    Path::new(path).exists(),
                    "{path}"
                );
            }
        }
    }

    #[test]
    fn exit_status_codes() {
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
        assert_eq!(
            ExitStatus::Signaled(9).to_string(),
            "killed by signal SIGKILL"
        );
        assert!(ExitStatus::Exited(0).success());
        assert!(!ExitStatus::Exited(2).success());
        let seccomp = ExitStatus::Signaled(libc::SIGSYS).to_string();
        assert!(seccomp.contains("seccomp=unconfined"), "{seccomp}");
    }
}

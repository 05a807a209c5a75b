//! The sandbox child's setup as data: a list of [`Step`]s built in the parent (every path already a
//! `CString`, every pointer array built) and executed in the child through a [`Syscall`]. Building
//! before `clone` is what makes the child safe in a multi-threaded parent — it only walks this list and
//! makes raw syscalls, never allocating — and it lets tests run the same list against the recording
//! fake. `docs/sandbox.md` explains the order.

use std::ffi::{CString, c_char};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;

use crate::fsutil::join_inside;
use crate::snapshot::OVERLAY_OPTIONS;
use crate::snapshot::{MountStub, RootMount, StubKind};
use crate::syscall::Syscall;

/// Why a step list could not be built (all before anything runs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{0:?} contains a NUL byte")]
    NulByte(String),
    #[error("empty command")]
    EmptyCommand,
    #[error("path {0} is not UTF-8 (overlay options are strings)")]
    NonUtf8Path(std::path::PathBuf),
    #[error("an overlay root needs at least one lower dir")]
    NoLowerDirs,
    #[error("working dir {0:?} contains '..'")]
    DotDotInWorkdir(String),
    #[error("the overlay root's mount stubs have no layer yet (see RootMount::with_stub_layer)")]
    UnplacedStubs,
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
}

/// Mount option strings longer than this do not fit mount(2)'s one-page copy; such overlays use the
/// new mount API with one `lowerdir+` per layer instead.
pub const MAX_MOUNT_DATA: usize = 4095;

/// The last argument vector and environment, with their NULL-terminated pointer arrays.
#[derive(Debug)]
pub struct ExecArgs {
    /// Paths to try in order (PATH lookup happens here, against the container's PATH).
    candidates: Vec<CString>,
    argv: Vec<CString>,
    /// Owns the strings `envp_ptrs` points at.
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    envp_ptrs: Vec<*const c_char>,
}

impl ExecArgs {
    /// Prepares `args` (`argv[0]` searched in `path_var` unless it contains '/') and `env` (KEY=VALUE).
    ///
    /// # Errors
    /// An empty `args`, or a string containing a NUL byte.
    pub fn new(args: &[String], env: &[String], path_var: &str) -> Result<ExecArgs, PlanError> {
        let cstring = cstr;
        let program = args.first().ok_or(PlanError::EmptyCommand)?;
        let candidates = if program.contains('/') {
            vec![cstring(program)?]
        } else {
            path_var
                .split(':')
                .filter(|dir| !dir.is_empty())
                .map(|dir| cstring(&format!("{}/{program}", dir.trim_end_matches('/'))))
                .collect::<Result<_, _>>()?
        };
        let argv: Vec<CString> = args.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?;
        let envp: Vec<CString> = env.iter().map(|e| cstring(e)).collect::<Result<_, _>>()?;
        // The CStrings' heap buffers do not move when the Vecs move, so the pointers stay valid.
        let pointers = |strings: &[CString]| -> Vec<*const c_char> {
            strings
                .iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        let (argv_ptrs, envp_ptrs) = (pointers(&argv), pointers(&envp));
        Ok(ExecArgs {
            candidates,
            argv,
            _envp: envp,
            argv_ptrs,
            envp_ptrs,
        })
    }

    /// The program name as given.
    pub fn program(&self) -> String {
        self.argv
            .first()
            .map(|a| a.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// One setup action of the child.
#[derive(Debug)]
pub enum Step {
    SetParentDeathSignal,
    ResetSignals,
    Setsid,
    Dup2 {
        from: RawFd,
        to: RawFd,
    },
    /// Writes "0" to an open `cgroup.procs` (joins the cgroup).
    JoinCgroup {
        procs_fd: RawFd,
    },
    Mount {
        source: Option<CString>,
        target: CString,
        fstype: Option<CString>,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    /// overlayfs through fsopen/fsconfig(`lowerdir+`)/fsmount/move_mount: no option-size limit.
    MountOverlayNewApi {
        target: CString,
        lower_dirs: Vec<CString>,
        options: Vec<(CString, CString)>,
    },
    /// Clones the mount at `source` (still resolvable on the host side) into fd slot `slot`.
    OpenTree {
        source: CString,
        slot: usize,
    },
    Chdir(CString),
    /// `pivot_root(".", ".")`: the old root ends up stacked on the new one...
    PivotRoot,
    /// ...and is lazily detached here, so nothing of the host stays reachable.
    DetachOldRoot,
    Mkdir {
        path: CString,
        mode: u32,
    },
    /// Creates each missing prefix and chowns what it created.
    MkdirAll {
        prefixes: Vec<CString>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Mknod {
        path: CString,
        mode: u32,
        dev: u64,
    },
    /// A generated file (`/etc/hosts`...), created or truncated.
    WriteFile {
        path: CString,
        contents: Vec<u8>,
    },
    /// The mount stubs' layer: each entry a dir or an empty file, parents first. An entry that
    /// exists, or whose parent is a file (two stubs disagreeing), is skipped, as on disk: the mount
    /// onto it reports the problem.
    MakeStubs(Vec<StubEntry>),
    Symlink {
        target: CString,
        link: CString,
    },
    /// Attaches the mount in fd slot `slot` at `target` (resolved inside the new root).
    MoveMount {
        slot: usize,
        target: CString,
    },
    SetHostname(CString),
    LoopbackUp,
    /// Opens a pty from the container's devpts, sends the master to the parent over `socket`, makes the
    /// slave the controlling terminal and stdin/stdout/stderr.
    Pty {
        ptmx: CString,
        socket: RawFd,
    },
    /// Removes every capability up to `last` (the kernel's last) that is not in `keep` from the
    /// bounding set: nothing the command execs can gain them back.
    DropBoundingCapabilities {
        keep: u64,
        last: u32,
    },
    /// capset(2) of the effective, permitted and inheritable sets, then clears the ambient set.
    SetCapabilities {
        effective: u64,
        permitted: u64,
        inheritable: u64,
    },
    /// Sets `MOUNT_ATTR_*` bits on the mount at `target` and below (mount_setattr(2)).
    SetMountAttributes {
        target: CString,
        attributes: u64,
    },
    /// Hides `path` (if the kernel has it) under an empty read-only tmpfs (`dir`) or `/dev/null`.
    MaskPath {
        path: CString,
        dir: bool,
    },
    /// Makes `path` (if the kernel has it) read-only: bound onto itself, then marked read-only.
    ReadOnlyPath(CString),
    /// Installs the seccomp filter (`seccomp(SECCOMP_SET_MODE_FILTER)`), compiled in the parent.
    /// Runs while the child still has CAP_SYS_ADMIN, so no `no_new_privs` is needed.
    InstallSeccomp(std::sync::Arc<crate::seccomp::SeccompProgram>),
    SetGroups(Vec<libc::gid_t>),
    SetGid(u32),
    SetUid(u32),
    CloexecFrom(RawFd),
    /// `--init`: forks; the rest of the steps run in the new process (the command's), while this
    /// one stays PID 1 as the init (`crate::init`). With `tty` the new process takes the terminal.
    ForkInit {
        tty: bool,
    },
    Exec(ExecArgs),
}

/// One path of [`Step::MakeStubs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StubEntry {
    pub path: CString,
    pub dir: bool,
}

/// The step that lays `stubs` out under `dir` (which it creates too): every parent as a dir, each
/// stub as its kind.
///
/// # Errors
/// A path containing a NUL byte.
pub fn stub_layer_step(dir: &Path, stubs: &[MountStub]) -> Result<Step, PlanError> {
    let mut entries = vec![StubEntry {
        path: cpath(dir)?,
        dir: true,
    }];
    for stub in stubs {
        let target = join_inside(dir, &stub.path);
        let Ok(relative) = target.strip_prefix(dir) else {
            continue;
        };
        let mut current = dir.to_path_buf();
        let parts: Vec<_> = relative.components().collect();
        for (index, part) in parts.iter().enumerate() {
            current.push(part);
            let is_dir = index + 1 < parts.len() || stub.kind == StubKind::Dir;
            let entry = StubEntry {
                path: cpath(&current)?,
                dir: is_dir,
            };
            if !entries.iter().any(|e| e.path == entry.path) {
                entries.push(entry);
            }
        }
    }
    Ok(Step::MakeStubs(entries))
}

/// A setup failure in the child: which step and the errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepFailure {
    pub index: usize,
    pub errno: Errno,
}

/// Runs `steps` in order. Allocation-free for [`crate::syscall::LinuxSyscall`]; `slots` holds fds
/// from `OpenTree` steps and must be long enough for every slot used.
pub fn execute(steps: &[Step], sys: &dyn Syscall, slots: &mut [RawFd]) -> Result<(), StepFailure> {
    for (index, step) in steps.iter().enumerate() {
        execute_step(step, sys, slots).map_err(|errno| StepFailure { index, errno })?;
    }
    Ok(())
}

fn execute_step(step: &Step, sys: &dyn Syscall, slots: &mut [RawFd]) -> Result<(), Errno> {
    match step {
        Step::SetParentDeathSignal => sys.set_parent_death_signal(),
        Step::ResetSignals => sys.reset_signals(),
        Step::Setsid => sys.setsid(),
        Step::Dup2 { from, to } => sys.dup2(*from, *to),
        Step::JoinCgroup { procs_fd } => sys.write_all(*procs_fd, b"0"),
        Step::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => sys.mount(
            source.as_deref(),
            target,
            fstype.as_deref(),
            *flags,
            data.as_deref(),
        ),
        Step::MountOverlayNewApi {
            target,
            lower_dirs,
            options,
        } => {
            let fs_fd = sys.fsopen(c"overlay")?;
            let result = (|| {
                for lower in lower_dirs {
                    sys.fsconfig_string(fs_fd, c"lowerdir+", lower)?;
                }
                for (key, value) in options {
                    sys.fsconfig_string(fs_fd, key, value)?;
                }
                sys.fsconfig_create(fs_fd)?;
                let mount_fd = sys.fsmount(fs_fd)?;
                let moved = sys.move_mount(mount_fd, target);
                sys.close(mount_fd);
                moved
            })();
            sys.close(fs_fd);
            result
        }
        Step::OpenTree { source, slot } => {
            let fd = sys.open_tree(source)?;
            match slots.get_mut(*slot) {
                Some(entry) => *entry = fd,
                None => return Err(Errno::EBADF),
            }
            Ok(())
        }
        Step::Chdir(path) => sys.chdir(path),
        Step::PivotRoot => sys.pivot_root(c".", c"."),
        Step::DetachOldRoot => sys.umount_detach(c"."),
        Step::Mkdir { path, mode } => match sys.mkdir(path, *mode) {
            Err(Errno::EEXIST) => Ok(()),
            other => other,
        },
        Step::MkdirAll {
            prefixes,
            mode,
            uid,
            gid,
        } => {
            for prefix in prefixes {
                match sys.mkdir(prefix, *mode) {
                    Ok(()) => sys.lchown(prefix, *uid, *gid)?,
                    Err(Errno::EEXIST) => {}
                    Err(errno) => return Err(errno),
                }
            }
            Ok(())
        }
        Step::Mknod { path, mode, dev } => sys.mknod(path, *mode, *dev),
        Step::WriteFile { path, contents } => sys.write_file(path, contents),
        Step::MakeStubs(entries) => {
            for entry in entries {
                let made = if entry.dir {
                    sys.mkdir(&entry.path, 0o755)
                } else {
                    // mknod(S_IFREG) makes an empty file in one call, with no fd to close.
                    sys.mknod(&entry.path, libc::S_IFREG | 0o644, 0)
                };
                match made {
                    Ok(()) | Err(Errno::EEXIST | Errno::ENOTDIR) => {}
                    Err(errno) => return Err(errno),
                }
            }
            Ok(())
        }
        Step::Symlink { target, link } => sys.symlink(target, link),
        Step::MoveMount { slot, target } => {
            let fd = *slots.get(*slot).ok_or(Errno::EBADF)?;
            let moved = sys.move_mount(fd, target);
            sys.close(fd);
            moved
        }
        Step::SetHostname(name) => sys.sethostname(name),
        Step::LoopbackUp => sys.loopback_up(),
        Step::Pty { ptmx, socket } => {
            let (master, slave) = sys.open_pty(ptmx)?;
            let sent = sys.send_fd(*socket, master);
            sys.close(master);
            sent?;
            sys.set_controlling_tty(slave)?;
            for to in 0..3 {
                sys.dup2(slave, to)?;
            }
            if slave > 2 {
                sys.close(slave);
            }
            Ok(())
        }
        Step::DropBoundingCapabilities { keep, last } => {
            for number in 0..=*last {
                if number >= 64 || keep & (1 << number) == 0 {
                    sys.drop_bounding_capability(number)?;
                }
            }
            Ok(())
        }
        Step::SetCapabilities {
            effective,
            permitted,
            inheritable,
        } => {
            sys.set_capabilities(*effective, *permitted, *inheritable)?;
            sys.clear_ambient_capabilities()
        }
        Step::SetMountAttributes { target, attributes } => sys.mount_setattr(target, *attributes),
        Step::MaskPath { path, dir } => {
            let masked = if *dir {
                sys.mount(
                    Some(c"tmpfs"),
                    path,
                    Some(c"tmpfs"),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    None,
                )
            } else {
                sys.mount(Some(c"/dev/null"), path, None, libc::MS_BIND, None)
            };
            match masked {
                Err(Errno::ENOENT) => Ok(()),
                other => other,
            }
        }
        Step::ReadOnlyPath(path) => {
            match sys.mount(Some(path), path, None, libc::MS_BIND | libc::MS_REC, None) {
                Err(Errno::ENOENT) => return Ok(()),
                other => other?,
            }
            sys.mount_setattr(path, crate::syscall::MOUNT_ATTR_RDONLY)
        }
        Step::InstallSeccomp(program) => sys.install_seccomp_filter(program.instructions()),
        Step::SetGroups(gids) => sys.setgroups(gids),
        Step::SetGid(gid) => sys.setresgid(*gid),
        Step::SetUid(uid) => sys.setresuid(*uid),
        Step::CloexecFrom(first) => sys.cloexec_from(*first),
        Step::ForkInit { tty } => sys.fork_init(*tty),
        Step::Exec(args) => {
            // Like execvp: keep looking after "not here" or "not allowed", report EACCES if that is
            // all we found, ENOENT otherwise.
            let mut saw_eacces = false;
            for candidate in &args.candidates {
                match sys.execve(candidate, &args.argv_ptrs, &args.envp_ptrs) {
                    Errno::UnknownErrno => return Ok(()),
                    Errno::ENOENT | Errno::ENOTDIR => {}
                    Errno::EACCES => saw_eacces = true,
                    errno => return Err(errno),
                }
            }
            Err(if saw_eacces {
                Errno::EACCES
            } else {
                Errno::ENOENT
            })
        }
    }
}

impl std::fmt::Display for Step {
    /// A human description for error messages ("mount proc on /proc").
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            Step::SetParentDeathSignal => write!(f, "set the parent-death signal"),
            Step::ResetSignals => write!(f, "reset signal dispositions"),
            Step::Setsid => write!(f, "start a new session"),
            Step::Dup2 { from, to } => write!(f, "dup fd {from} to {to}"),
            Step::JoinCgroup { .. } => write!(f, "join the sandbox cgroup"),
            Step::Mount {
                source,
                target,
                fstype,
                ..
            } => write!(
                f,
                "mount {} ({}) on {}",
                source.as_ref().map_or("-".into(), s),
                fstype.as_ref().map_or("-".into(), s),
                s(target)
            ),
            Step::MountOverlayNewApi {
                target, lower_dirs, ..
            } => {
                write!(
                    f,
                    "mount overlay with {} lower dirs on {} (fsopen API)",
                    lower_dirs.len(),
                    s(target)
                )
            }
            Step::OpenTree { source, .. } => write!(f, "open mount source {}", s(source)),
            Step::Chdir(path) => write!(f, "chdir to {}", s(path)),
            Step::PivotRoot => write!(f, "pivot_root into the new root"),
            Step::DetachOldRoot => write!(f, "detach the old root"),
            Step::Mkdir { path, .. } => write!(f, "mkdir {}", s(path)),
            Step::MkdirAll { prefixes, .. } => {
                write!(
                    f,
                    "create working dir {}",
                    prefixes.last().map_or("/".into(), s)
                )
            }
            Step::Mknod { path, .. } => write!(f, "mknod {}", s(path)),
            Step::WriteFile { path, .. } => write!(f, "write {}", s(path)),
            Step::MakeStubs(entries) => write!(
                f,
                "create mount points under {}",
                entries.first().map_or("-".into(), |e| s(&e.path))
            ),
            Step::Symlink { link, .. } => write!(f, "symlink {}", s(link)),
            Step::MoveMount { target, .. } => {
                write!(f, "mount onto {} (does the target exist?)", s(target))
            }
            Step::SetHostname(name) => write!(f, "set hostname {}", s(name)),
            Step::LoopbackUp => write!(f, "bring up lo"),
            Step::Pty { .. } => write!(f, "open the terminal"),
            Step::DropBoundingCapabilities { keep, .. } => {
                write!(f, "limit the capability bounding set to {keep:#x}")
            }
            Step::SetCapabilities { effective, .. } => {
                write!(f, "set capabilities {effective:#x}")
            }
            Step::SetMountAttributes { target, .. } => {
                write!(f, "set mount attributes on {}", s(target))
            }
            Step::MaskPath { path, .. } => write!(f, "mask {}", s(path)),
            Step::ReadOnlyPath(path) => write!(f, "make {} read-only", s(path)),
            Step::InstallSeccomp(_) => write!(f, "install the seccomp filter"),
            Step::SetGroups(gids) => write!(f, "set supplementary groups {gids:?}"),
            Step::SetGid(gid) => write!(f, "set gid {gid}"),
            Step::SetUid(uid) => write!(f, "set uid {uid}"),
            Step::CloexecFrom(_) => write!(f, "mark inherited fds close-on-exec"),
            Step::ForkInit { .. } => write!(f, "start the init (--init)"),
            Step::Exec(args) => write!(f, "exec {}", args.program()),
        }
    }
}

/// "MS_BIND|MS_REC" for a flags word (unknown bits in hex), for the recording fake and logs.
pub fn describe_mount_flags(flags: libc::c_ulong) -> String {
    const NAMES: &[(libc::c_ulong, &str)] = &[
        (libc::MS_RDONLY, "MS_RDONLY"),
        (libc::MS_NOSUID, "MS_NOSUID"),
        (libc::MS_NODEV, "MS_NODEV"),
        (libc::MS_NOEXEC, "MS_NOEXEC"),
        (libc::MS_REMOUNT, "MS_REMOUNT"),
        (libc::MS_BIND, "MS_BIND"),
        (libc::MS_REC, "MS_REC"),
        (libc::MS_PRIVATE, "MS_PRIVATE"),
        (libc::MS_STRICTATIME, "MS_STRICTATIME"),
    ];
    let mut rest = flags;
    let mut parts: Vec<String> = Vec::new();
    for (bit, name) in NAMES {
        if flags & bit != 0 {
            parts.push((*name).to_string());
            rest &= !bit;
        }
    }
    if rest != 0 {
        parts.push(format!("{rest:#x}"));
    }
    if parts.is_empty() {
        "0".to_string()
    } else {
        parts.join("|")
    }
}

pub(crate) fn cpath(path: &Path) -> Result<CString, PlanError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| PlanError::NulByte(path.display().to_string()))
}

pub(crate) fn cstr(s: &str) -> Result<CString, PlanError> {
    CString::new(s).map_err(|_| PlanError::NulByte(s.to_string()))
}

/// The step that mounts `root` on `target`: one mount(2) when the option string fits a page and the
/// paths need no escaping, else the new mount API.
///
/// # Errors
/// No lower dirs, a non-UTF-8 or NUL-containing path.
pub fn root_mount_step(root: &RootMount, target: &Path) -> Result<Step, PlanError> {
    let target = cpath(target)?;
    match root {
        RootMount::Bind { source } => Ok(Step::Mount {
            source: Some(cpath(source)?),
            target,
            fstype: None,
            flags: libc::MS_BIND | libc::MS_REC,
            data: None,
        }),
        RootMount::Overlay {
            lower_dirs,
            upper_dir,
            work_dir,
            stubs,
        } => {
            if !stubs.is_empty() {
                return Err(PlanError::UnplacedStubs);
            }
            if lower_dirs.is_empty() {
                return Err(PlanError::NoLowerDirs);
            }
            let strings: Vec<String> = lower_dirs
                .iter()
                .chain([upper_dir, work_dir])
                .map(|p| {
                    p.to_str()
                        .map(str::to_string)
                        .ok_or_else(|| PlanError::NonUtf8Path(p.clone()))
                })
                .collect::<Result<_, _>>()?;
            let (lowers, rest) = strings.split_at(lower_dirs.len());
            let needs_escaping = strings.iter().any(|p| p.contains([',', ':', '\\']));
            let legacy = format!(
                "lowerdir={},upperdir={},workdir={},{}",
                lowers.join(":"),
                rest[0],
                rest[1],
                OVERLAY_OPTIONS
            );
            if legacy.len() <= MAX_MOUNT_DATA && !needs_escaping {
                return Ok(Step::Mount {
                    source: Some(c"overlay".to_owned()),
                    target,
                    fstype: Some(c"overlay".to_owned()),
                    flags: 0,
                    data: Some(cstr(&legacy)?),
                });
            }
            let mut options = vec![
                (c"upperdir".to_owned(), cstr(&rest[0])?),
                (c"workdir".to_owned(), cstr(&rest[1])?),
            ];
            for option in OVERLAY_OPTIONS.split(',') {
                let (key, value) = option.split_once('=').unwrap_or((option, ""));
                options.push((cstr(key)?, cstr(value)?));
            }
            Ok(Step::MountOverlayNewApi {
                target,
                lower_dirs: lowers.iter().map(|l| cstr(l)).collect::<Result<_, _>>()?,
                options,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscall::RecordingSyscall;
    use std::path::PathBuf;

    fn overlay(lowers: usize, name_len: usize) -> RootMount {
        RootMount::Overlay {
            lower_dirs: (0..lowers)
                .map(|i| PathBuf::from(format!("/l/{i:0name_len$}")))
                .collect(),
            upper_dir: "/s/upper".into(),
            work_dir: "/s/work".into(),
            stubs: Vec::new(),
        }
    }

    #[test]
    fn short_overlay_uses_one_mount_call() {
        let step = root_mount_step(&overlay(2, 1), Path::new("/s/root")).unwrap();
        let sys = RecordingSyscall::new();
        execute(&[step], &sys, &mut []).unwrap();
        assert_eq!(
            sys.calls(),
            [
                "mount overlay /s/root overlay 0 lowerdir=/l/0:/l/1,upperdir=/s/upper,workdir=/s/work,index=off,metacopy=off,redirect_dir=off"
            ]
        );
    }

    #[test]
    fn deep_overlay_uses_the_new_mount_api_in_order() {
        let step = root_mount_step(&overlay(130, 64), Path::new("/s/root")).unwrap();
        assert!(matches!(step, Step::MountOverlayNewApi { .. }));
        let sys = RecordingSyscall::new();
        execute(&[step], &sys, &mut []).unwrap();
        let calls = sys.calls();
        assert_eq!(calls[0], "fsopen overlay = 100");
        assert_eq!(calls[1], format!("fsconfig 100 lowerdir+=/l/{:064}", 0));
        assert_eq!(calls[130], format!("fsconfig 100 lowerdir+=/l/{:064}", 129));
        assert_eq!(
            &calls[131..],
            [
                "fsconfig 100 upperdir=/s/upper",
                "fsconfig 100 workdir=/s/work",
                "fsconfig 100 index=off",
                "fsconfig 100 metacopy=off",
                "fsconfig 100 redirect_dir=off",
                "fsconfig 100 create",
                "fsmount 100 = 101",
                "move_mount 101 /s/root",
                "close 101",
                "close 100",
            ]
        );
    }

    #[test]
    fn paths_needing_escapes_use_the_new_api() {
        let root = RootMount::Overlay {
            lower_dirs: vec!["/l/a:b".into()],
            upper_dir: "/u".into(),
            work_dir: "/w".into(),
            stubs: Vec::new(),
        };
        assert!(matches!(
            root_mount_step(&root, Path::new("/r")).unwrap(),
            Step::MountOverlayNewApi { .. }
        ));
        let empty = RootMount::Overlay {
            lower_dirs: vec![],
            upper_dir: "/u".into(),
            work_dir: "/w".into(),
            stubs: Vec::new(),
        };
        assert!(root_mount_step(&empty, Path::new("/r")).is_err());
    }

    #[test]
    fn exec_searches_path_like_execvp() {
        let args = ExecArgs::new(
            &["ls".into(), "-l".into()],
            &["A=1".into()],
            "/usr/bin::/bin/",
        )
        .unwrap();
        let sys = RecordingSyscall::failing_on("execve /usr/bin/ls", Errno::ENOENT);
        execute(&[Step::Exec(args)], &sys, &mut []).unwrap();
        assert_eq!(
            sys.calls(),
            [
                r#"execve /usr/bin/ls ["ls", "-l"] ["A=1"]"#,
                r#"execve /bin/ls ["ls", "-l"] ["A=1"]"#
            ]
        );

        let args = ExecArgs::new(&["/opt/tool".into()], &[], "/bin").unwrap();
        let sys = RecordingSyscall::failing_on("execve", Errno::EACCES);
        let failure = execute(&[Step::Exec(args)], &sys, &mut []).unwrap_err();
        assert_eq!(
            failure,
            StepFailure {
                index: 0,
                errno: Errno::EACCES
            }
        );
        assert!(ExecArgs::new(&[], &[], "/bin").is_err());
        assert!(ExecArgs::new(&["a\0b".into()], &[], "/bin").is_err());
    }

    #[test]
    fn failures_name_their_step_and_stop_the_sequence() {
        let steps = [
            Step::Mkdir {
                path: c"/a".to_owned(),
                mode: 0o755,
            },
            Step::Chdir(c"/a".to_owned()),
            Step::SetUid(5),
        ];
        let sys = RecordingSyscall::failing_on("chdir", Errno::EACCES);
        let failure = execute(&steps, &sys, &mut []).unwrap_err();
        assert_eq!(
            failure,
            StepFailure {
                index: 1,
                errno: Errno::EACCES
            }
        );
        assert_eq!(sys.calls(), ["mkdir /a 755", "chdir /a"]);
        assert_eq!(steps[failure.index].to_string(), "chdir to /a");
    }

    #[test]
    fn mkdir_all_chowns_only_what_it_creates() {
        let step = Step::MkdirAll {
            prefixes: vec![c"/srv".to_owned(), c"/srv/app".to_owned()],
            mode: 0o755,
            uid: 7,
            gid: 8,
        };
        let sys = RecordingSyscall::failing_on("mkdir /srv 755", Errno::EEXIST);
        execute(&[step], &sys, &mut []).unwrap();
        assert_eq!(
            sys.calls(),
            [
                "mkdir /srv 755",
                "mkdir /srv/app 755",
                "lchown /srv/app 7:8"
            ]
        );
    }

    #[test]
    fn stub_layer_lays_out_parents_first_once_each() {
        let stubs = [
            MountStub {
                path: "/etc/hosts".into(),
                kind: StubKind::File,
            },
            MountStub {
                path: "/etc/hostname".into(),
                kind: StubKind::File,
            },
            MountStub {
                path: "/run/secrets/id".into(),
                kind: StubKind::File,
            },
            MountStub {
                path: "/proc".into(),
                kind: StubKind::Dir,
            },
        ];
        let step = stub_layer_step(Path::new("/t/stubs"), &stubs).unwrap();
        // A stub under a file stub cannot be made: skipped, as on disk (the mount reports it).
        let sys = RecordingSyscall::failing_on("mkdir /t/stubs/run/secrets", Errno::ENOTDIR);
        execute(&[step], &sys, &mut []).unwrap();
        assert_eq!(
            sys.calls(),
            [
                "mkdir /t/stubs 755",
                "mkdir /t/stubs/etc 755",
                "mknod /t/stubs/etc/hosts 100644 0:0",
                "mknod /t/stubs/etc/hostname 100644 0:0",
                "mkdir /t/stubs/run 755",
                "mkdir /t/stubs/run/secrets 755",
                "mknod /t/stubs/run/secrets/id 100644 0:0",
                "mkdir /t/stubs/proc 755",
            ]
        );
    }

    #[test]
    fn stubs_must_have_a_layer_before_mounting() {
        let mut root = overlay(1, 1);
        if let RootMount::Overlay { stubs, .. } = &mut root {
            stubs.push(MountStub {
                path: "/proc".into(),
                kind: StubKind::Dir,
            });
        }
        assert_eq!(
            root_mount_step(&root, Path::new("/r")).unwrap_err(),
            PlanError::UnplacedStubs
        );
    }

    #[test]
    fn fork_init_runs_before_the_exec_and_its_failure_is_named() {
        let exec = || Step::Exec(ExecArgs::new(&["/bin/true".into()], &[], "/bin").unwrap());
        let sys = RecordingSyscall::new();
        execute(&[Step::ForkInit { tty: true }, exec()], &sys, &mut []).unwrap();
        assert_eq!(
            sys.calls(),
            ["fork_init tty=true", r#"execve /bin/true ["/bin/true"] []"#]
        );

        let steps = [Step::ForkInit { tty: false }, exec()];
        let sys = RecordingSyscall::failing_on("fork_init", Errno::EAGAIN);
        let failure = execute(&steps, &sys, &mut []).unwrap_err();
        assert_eq!(
            failure,
            StepFailure {
                index: 0,
                errno: Errno::EAGAIN
            }
        );
        assert_eq!(
            sys.calls(),
            ["fork_init tty=false"],
            "no exec after a failed fork"
        );
        assert_eq!(steps[0].to_string(), "start the init (--init)");
    }

    #[test]
    fn confinement_steps_skip_what_the_kernel_lacks() {
        let steps = [
            Step::MaskPath {
                path: c"/proc/kcore".to_owned(),
                dir: false,
            },
            Step::MaskPath {
                path: c"/proc/scsi".to_owned(),
                dir: true,
            },
            Step::ReadOnlyPath(c"/proc/bus".to_owned()),
            Step::ReadOnlyPath(c"/proc/sys".to_owned()),
            Step::DropBoundingCapabilities {
                keep: 0b1011,
                last: 4,
            },
            Step::SetCapabilities {
                effective: 0b1011,
                permitted: 0b1011,
                inheritable: 0,
            },
        ];
        // A kernel without /proc/kcore and /proc/bus: both are skipped, nothing else is.
        let sys = RecordingSyscall::failing_on("mount /dev/null /proc/kcore", Errno::ENOENT);
        execute(&steps[..1], &sys, &mut []).unwrap();
        let sys = RecordingSyscall::failing_on("mount /proc/bus", Errno::ENOENT);
        execute(&steps[1..], &sys, &mut []).unwrap();
        assert_eq!(
            sys.calls(),
            [
                "mount tmpfs /proc/scsi tmpfs MS_RDONLY|MS_NOSUID|MS_NODEV|MS_NOEXEC -",
                "mount /proc/bus /proc/bus - MS_BIND|MS_REC -",
                "mount /proc/sys /proc/sys - MS_BIND|MS_REC -",
                "mount_setattr /proc/sys rdonly",
                "capbset_drop 2",
                "capbset_drop 4",
                "capset eff=0xb prm=0xb inh=0x0",
                "ambient_clear",
            ]
        );
        // Any other failure stops the setup.
        let sys = RecordingSyscall::failing_on("mount tmpfs /proc/scsi", Errno::EPERM);
        assert_eq!(
            execute(&steps[1..2], &sys, &mut []).unwrap_err().errno,
            Errno::EPERM
        );
    }

    #[test]
    fn flags_are_described() {
        assert_eq!(
            describe_mount_flags(libc::MS_BIND | libc::MS_REC),
            "MS_BIND|MS_REC"
        );
        assert_eq!(describe_mount_flags(0), "0");
    }
}

//! The narrow syscall surface the sandbox child uses, behind a trait (as youki does): [`LinuxSyscall`]
//! makes the real calls, [`RecordingSyscall`] records them so the mount sequence is unit-tested without
//! root.
//!
//! Every method of the real implementation is a thin wrapper over one or two raw syscalls with
//! caller-prepared C strings: no allocation, no locks, so it is safe to call in the child between
//! `clone` and `execve` of a multi-threaded parent.

use std::cell::RefCell;
use std::ffi::{CStr, c_char};
use std::os::fd::RawFd;

use nix::errno::Errno;

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_SYMLINKS: libc::c_uint = 0x10;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 4;
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `mount_setattr(2)` attributes.
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `struct __user_cap_header_struct` of capset(2).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// One half (32 capabilities) of `struct __user_cap_data_struct` for version 3.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The syscalls of sandbox setup. Paths are C strings prepared before `clone`.
pub trait Syscall {
    /// mount(2).
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> Result<(), Errno>;
    /// umount2(2) with MNT_DETACH.
    fn umount_detach(&self, target: &CStr) -> Result<(), Errno>;
    /// pivot_root(2).
    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> Result<(), Errno>;
    fn chdir(&self, path: &CStr) -> Result<(), Errno>;
    fn mkdir(&self, path: &CStr, mode: u32) -> Result<(), Errno>;
    fn lchown(&self, path: &CStr, uid: u32, gid: u32) -> Result<(), Errno>;
    fn mknod(&self, path: &CStr, mode: u32, dev: u64) -> Result<(), Errno>;
    /// Creates (or truncates) the regular file `path` with mode 0644 and writes `bytes` into it;
    /// never follows a symlink at `path`.
    fn write_file(&self, path: &CStr, bytes: &[u8]) -> Result<(), Errno>;
    fn symlink(&self, target: &CStr, link: &CStr) -> Result<(), Errno>;
    /// open_tree(2) with OPEN_TREE_CLONE | AT_RECURSIVE: a detached copy of the mount at `path`.
    fn open_tree(&self, path: &CStr) -> Result<RawFd, Errno>;
    /// move_mount(2) of a detached mount fd onto `target`, following symlinks in `target` (called
    /// after pivot_root, so they resolve inside the container: `/etc/resolv.conf -> ../run/...`).
    fn move_mount(&self, mount_fd: RawFd, target: &CStr) -> Result<(), Errno>;
    /// fsopen(2).
    fn fsopen(&self, fstype: &CStr) -> Result<RawFd, Errno>;
    /// fsconfig(2) FSCONFIG_SET_STRING.
    fn fsconfig_string(&self, fs_fd: RawFd, key: &CStr, value: &CStr) -> Result<(), Errno>;
    /// fsconfig(2) FSCONFIG_CMD_CREATE.
    fn fsconfig_create(&self, fs_fd: RawFd) -> Result<(), Errno>;
    /// fsmount(2).
    fn fsmount(&self, fs_fd: RawFd) -> Result<RawFd, Errno>;
    fn close(&self, fd: RawFd);
    fn sethostname(&self, name: &CStr) -> Result<(), Errno>;
    /// Sets `lo` up in the current network namespace.
    fn loopback_up(&self) -> Result<(), Errno>;
    fn setgroups(&self, gids: &[libc::gid_t]) -> Result<(), Errno>;
    fn setresgid(&self, gid: u32) -> Result<(), Errno>;
    fn setresuid(&self, uid: u32) -> Result<(), Errno>;
    fn dup2(&self, from: RawFd, to: RawFd) -> Result<(), Errno>;
    fn setsid(&self) -> Result<(), Errno>;
    /// Kill this process when its parent dies.
    fn set_parent_death_signal(&self) -> Result<(), Errno>;
    /// Default dispositions and an empty mask (the parent may ignore SIGPIPE, as Rust programs do).
    fn reset_signals(&self) -> Result<(), Errno>;
    /// Writes all of `bytes` to `fd` (e.g. "0" to a cgroup.procs file).
    fn write_all(&self, fd: RawFd, bytes: &[u8]) -> Result<(), Errno>;
    /// Opens a new pty pair from the ptmx at `ptmx`: (master, slave).
    fn open_pty(&self, ptmx: &CStr) -> Result<(RawFd, RawFd), Errno>;
    /// Sends `fd` over the unix socket `socket` (SCM_RIGHTS).
    fn send_fd(&self, socket: RawFd, fd: RawFd) -> Result<(), Errno>;
    /// Makes `fd` (a pty slave) the controlling terminal of this session.
    fn set_controlling_tty(&self, fd: RawFd) -> Result<(), Errno>;
    /// Marks every fd from `first` up close-on-exec.
    fn cloexec_from(&self, first: RawFd) -> Result<(), Errno>;
    /// prctl(PR_CAPBSET_DROP): removes capability `number` from the bounding set.
    fn drop_bounding_capability(&self, number: u32) -> Result<(), Errno>;
    /// capset(2) of this thread's effective, permitted and inheritable sets (bit n = capability n).
    fn set_capabilities(
        &self,
        effective: u64,
        permitted: u64,
        inheritable: u64,
    ) -> Result<(), Errno>;
    /// prctl(PR_CAP_AMBIENT_CLEAR_ALL).
    fn clear_ambient_capabilities(&self) -> Result<(), Errno>;
    /// mount_setattr(2), recursive: sets the `MOUNT_ATTR_*` bits in `attributes` on the mount at
    /// `path` and every mount below it, leaving its other attributes as they are.
    fn mount_setattr(&self, path: &CStr, attributes: u64) -> Result<(), Errno>;
    /// execve(2); returns only on failure. `argv`/`envp` are NULL-terminated pointer arrays.
    fn execve(&self, path: &CStr, argv: &[*const c_char], envp: &[*const c_char]) -> Errno;
    /// `kiln run --init`: forks the command's process and returns in it; this process (PID 1)
    /// stays behind as the init and never returns (see [`crate::init::fork_init`]).
    fn fork_init(&self, tty: bool) -> Result<(), Errno>;
    /// seccomp(SECCOMP_SET_MODE_FILTER) with `program` (needs CAP_SYS_ADMIN or `no_new_privs`).
    fn install_seccomp_filter(&self, program: &[libc::sock_filter]) -> Result<(), Errno>;
}

fn check(result: libc::c_int) -> Result<(), Errno> {
    if result == -1 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

fn check_fd(result: libc::c_long) -> Result<RawFd, Errno> {
    if result < 0 {
        Err(Errno::last())
    } else {
        Ok(result as RawFd)
    }
}

/// The real syscalls.
#[derive(Debug, Default, Clone, Copy)]
pub struct LinuxSyscall;

impl Syscall for LinuxSyscall {
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> Result<(), Errno> {
        let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
        // SAFETY: all pointers are NUL-terminated strings or null, valid for the call.
        check(unsafe {
            libc::mount(
                ptr(source),
                target.as_ptr(),
                ptr(fstype),
                flags,
                ptr(data).cast(),
            )
        })
    }

    fn umount_detach(&self, target: &CStr) -> Result<(), Errno> {
        // SAFETY: valid C string.
        check(unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) })
    }

    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> Result<(), Errno> {
        // SAFETY: valid C strings; glibc has no wrapper, so the raw syscall.
        check_fd(unsafe {
            libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr())
        })
        .map(drop)
    }

    fn chdir(&self, path: &CStr) -> Result<(), Errno> {
        // SAFETY: valid C string.
        check(unsafe { libc::chdir(path.as_ptr()) })
    }

    fn mkdir(&self, path: &CStr, mode: u32) -> Result<(), Errno> {
        // SAFETY: valid C string.
        check(unsafe { libc::mkdir(path.as_ptr(), mode) })
    }

    fn lchown(&self, path: &CStr, uid: u32, gid: u32) -> Result<(), Errno> {
        // SAFETY: valid C string.
        check(unsafe { libc::lchown(path.as_ptr(), uid, gid) })
    }

    fn mknod(&self, path: &CStr, mode: u32, dev: u64) -> Result<(), Errno> {
        // SAFETY: valid C string.
        check(unsafe { libc::mknod(path.as_ptr(), mode, dev) })
    }

    fn write_file(&self, path: &CStr, bytes: &[u8]) -> Result<(), Errno> {
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: valid C string; the fd is ours and closed on every path.
        let fd = unsafe { libc::open(path.as_ptr(), flags, 0o644 as libc::c_uint) };
        if fd < 0 {
            return Err(Errno::last());
        }
        let written = self.write_all(fd, bytes);
        self.close(fd);
        written
    }

    fn symlink(&self, target: &CStr, link: &CStr) -> Result<(), Errno> {
        // SAFETY: valid C strings.
        check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) })
    }

    fn open_tree(&self, path: &CStr) -> Result<RawFd, Errno> {
        let flags = OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint;
        // SAFETY: valid C string; raw syscall (no glibc wrapper on older glibc).
        check_fd(unsafe {
            libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags)
        })
    }

    fn move_mount(&self, mount_fd: RawFd, target: &CStr) -> Result<(), Errno> {
        let empty = c"";
        // SAFETY: valid C strings and fd.
        check_fd(unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mount_fd,
                empty.as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_SYMLINKS,
            )
        })
        .map(drop)
    }

    fn fsopen(&self, fstype: &CStr) -> Result<RawFd, Errno> {
        // SAFETY: valid C string.
        check_fd(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })
    }

    fn fsconfig_string(&self, fs_fd: RawFd, key: &CStr, value: &CStr) -> Result<(), Errno> {
        // SAFETY: valid C strings and fd.
        check_fd(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs_fd,
                FSCONFIG_SET_STRING,
                key.as_ptr(),
                value.as_ptr(),
                0,
            )
        })
        .map(drop)
    }

    fn fsconfig_create(&self, fs_fd: RawFd) -> Result<(), Errno> {
        let null: *const c_char = std::ptr::null();
        // SAFETY: fd; key and value must be null for CMD_CREATE.
        check_fd(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fs_fd,
                FSCONFIG_CMD_CREATE,
                null,
                null,
                0,
            )
        })
        .map(drop)
    }

    fn fsmount(&self, fs_fd: RawFd) -> Result<RawFd, Errno> {
        // SAFETY: plain integers.
        check_fd(unsafe { libc::syscall(libc::SYS_fsmount, fs_fd, FSMOUNT_CLOEXEC, 0) })
    }

    fn close(&self, fd: RawFd) {
        // SAFETY: closing an fd this process owns.
        unsafe { libc::close(fd) };
    }

    fn sethostname(&self, name: &CStr) -> Result<(), Errno> {
        let bytes = name.to_bytes();
        // SAFETY: pointer and length of a live buffer.
        check(unsafe { libc::sethostname(bytes.as_ptr().cast(), bytes.len()) })
    }

    fn loopback_up(&self) -> Result<(), Errno> {
        // SAFETY: socket/ioctl on a zeroed ifreq naming "lo"; all on the stack.
        unsafe {
            let sock = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if sock < 0 {
                return Err(Errno::last());
            }
            let mut request: libc::ifreq = std::mem::zeroed();
            for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
                *slot = *byte as c_char;
            }
            let mut result = libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut request);
            if result == 0 {
                request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
                result = libc::ioctl(sock, libc::SIOCSIFFLAGS, &request);
            }
            let outcome = if result < 0 {
                Err(Errno::last())
            } else {
                Ok(())
            };
            libc::close(sock);
            outcome
        }
    }

    fn setgroups(&self, gids: &[libc::gid_t]) -> Result<(), Errno> {
        // SAFETY: pointer and length of a live slice. Raw syscall: glibc's setgroups broadcasts to all
        // threads with a signal, which is neither needed nor wanted here.
        check_fd(unsafe { libc::syscall(libc::SYS_setgroups, gids.len(), gids.as_ptr()) }).map(drop)
    }

    fn setresgid(&self, gid: u32) -> Result<(), Errno> {
        // SAFETY: plain integers; raw syscall for the same reason as setgroups.
        check_fd(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) }).map(drop)
    }

    fn setresuid(&self, uid: u32) -> Result<(), Errno> {
        // SAFETY: plain integers.
        check_fd(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) }).map(drop)
    }

    fn dup2(&self, from: RawFd, to: RawFd) -> Result<(), Errno> {
        // SAFETY: plain fds.
        check(unsafe { libc::dup2(from, to) }).map(drop)
    }

    fn setsid(&self) -> Result<(), Errno> {
        // SAFETY: no arguments.
        check(unsafe { libc::setsid() })
    }

    fn set_parent_death_signal(&self) -> Result<(), Errno> {
        // SAFETY: plain integers.
        check(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) })
    }

    fn reset_signals(&self) -> Result<(), Errno> {
        // SAFETY: sigaction/sigprocmask with stack structs.
        unsafe {
            for signal in 1..libc::SIGRTMAX() {
                if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                    continue;
                }
                // Errors for the few signals glibc reserves are expected and harmless.
                libc::signal(signal, libc::SIG_DFL);
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            check(libc::sigprocmask(
                libc::SIG_SETMASK,
                &empty,
                std::ptr::null_mut(),
            ))
        }
    }

    fn write_all(&self, fd: RawFd, mut bytes: &[u8]) -> Result<(), Errno> {
        while !bytes.is_empty() {
            // SAFETY: pointer and length of a live slice.
            let written = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
            if written < 0 {
                if Errno::last() == Errno::EINTR {
                    continue;
                }
                return Err(Errno::last());
            }
            bytes = &bytes[written as usize..];
        }
        Ok(())
    }

    fn open_pty(&self, ptmx: &CStr) -> Result<(RawFd, RawFd), Errno> {
        // SAFETY: open/ioctl on fds this process owns.
        unsafe {
            let master = libc::open(
                ptmx.as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            );
            if master < 0 {
                return Err(Errno::last());
            }
            let unlock: libc::c_int = 0;
            if libc::ioctl(master, libc::TIOCSPTLCK, &unlock) < 0 {
                let errno = Errno::last();
                libc::close(master);
                return Err(errno);
            }
            // TIOCGPTPEER opens the slave through the master, without a path lookup.
            let slave = libc::ioctl(master, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY);
            if slave < 0 {
                let errno = Errno::last();
                libc::close(master);
                return Err(errno);
            }
            Ok((master, slave))
        }
    }

    fn send_fd(&self, socket: RawFd, fd: RawFd) -> Result<(), Errno> {
        // SAFETY: sendmsg with a stack-allocated control buffer sized for one fd.
        unsafe {
            let mut payload = [0u8; 1];
            let mut iov = libc::iovec {
                iov_base: payload.as_mut_ptr().cast(),
                iov_len: 1,
            };
            let mut control = [0u64; 8];
            let mut message: libc::msghdr = std::mem::zeroed();
            message.msg_iov = &mut iov;
            message.msg_iovlen = 1;
            message.msg_control = control.as_mut_ptr().cast();
            message.msg_controllen = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as usize;
            let header = libc::CMSG_FIRSTHDR(&message);
            (*header).cmsg_level = libc::SOL_SOCKET;
            (*header).cmsg_type = libc::SCM_RIGHTS;
            (*header).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<RawFd>(), fd);
            if libc::sendmsg(socket, &message, 0) < 0 {
                Err(Errno::last())
            } else {
                Ok(())
            }
        }
    }

    fn set_controlling_tty(&self, fd: RawFd) -> Result<(), Errno> {
        // SAFETY: ioctl on an fd this process owns.
        check(unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) })
    }

    fn cloexec_from(&self, first: RawFd) -> Result<(), Errno> {
        // SAFETY: plain integers.
        check_fd(unsafe {
            libc::syscall(
                libc::SYS_close_range,
                first as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC,
            )
        })
        .map(drop)
    }

    fn drop_bounding_capability(&self, number: u32) -> Result<(), Errno> {
        // SAFETY: plain integers.
        check(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, number as libc::c_ulong, 0, 0, 0) })
    }

    fn set_capabilities(
        &self,
        effective: u64,
        permitted: u64,
        inheritable: u64,
    ) -> Result<(), Errno> {
        let mut header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let half = |shift: u32| CapData {
            effective: (effective >> shift) as u32,
            permitted: (permitted >> shift) as u32,
            inheritable: (inheritable >> shift) as u32,
        };
        let data = [half(0), half(32)];
        // SAFETY: a v3 header and the two data structs it expects, on the stack. Raw syscall: glibc
        // has no wrapper.
        check_fd(unsafe {
            libc::syscall(
                libc::SYS_capset,
                &mut header as *mut CapHeader,
                data.as_ptr(),
            )
        })
        .map(drop)
    }

    fn clear_ambient_capabilities(&self) -> Result<(), Errno> {
        // SAFETY: plain integers.
        check(unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0,
            )
        })
    }

    fn mount_setattr(&self, path: &CStr, attributes: u64) -> Result<(), Errno> {
        let attr = MountAttr {
            attr_set: attributes,
            attr_clr: 0,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: valid C string and a mount_attr on the stack with its size.
        check_fd(unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                path.as_ptr(),
                AT_RECURSIVE,
                &attr as *const MountAttr,
                size_of::<MountAttr>(),
            )
        })
        .map(drop)
    }

    fn execve(&self, path: &CStr, argv: &[*const c_char], envp: &[*const c_char]) -> Errno {
        // SAFETY: argv/envp are NULL-terminated arrays of pointers to live C strings.
        unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        Errno::last()
    }

    fn fork_init(&self, tty: bool) -> Result<(), Errno> {
        crate::init::fork_init(tty)
    }

    fn install_seccomp_filter(&self, program: &[libc::sock_filter]) -> Result<(), Errno> {
        let len = u16::try_from(program.len()).map_err(|_| Errno::EINVAL)?;
        // The kernel copies the program and does not write through the pointer.
        let fprog = libc::sock_fprog {
            len,
            filter: program.as_ptr().cast_mut(),
        };
        // SAFETY: `fprog` points at `program`, alive for the call.
        check(unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                0,
                &fprog as *const libc::sock_fprog,
            )
        } as libc::c_int)
    }
}

/// A fake that records every call as one readable line and succeeds (or fails where told), handing out
/// fds from 100 up. For unit tests of the setup sequence; never used in a real child.
#[derive(Debug, Default)]
pub struct RecordingSyscall {
    calls: RefCell<Vec<String>>,
    next_fd: RefCell<RawFd>,
    /// Fail the first call whose recorded line starts with this prefix.
    fail_on: Option<(String, Errno)>,
}

impl RecordingSyscall {
    pub fn new() -> RecordingSyscall {
        RecordingSyscall::default()
    }

    /// A fake that fails the first call whose line starts with `prefix`.
    pub fn failing_on(prefix: &str, errno: Errno) -> RecordingSyscall {
        RecordingSyscall {
            fail_on: Some((prefix.to_string(), errno)),
            ..RecordingSyscall::default()
        }
    }

    /// The calls so far, one line each.
    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    fn record(&self, line: String) -> Result<(), Errno> {
        let fail = self
            .fail_on
            .as_ref()
            .filter(|(prefix, _)| line.starts_with(prefix.as_str()))
            .map(|(_, e)| *e);
        self.calls.borrow_mut().push(line);
        match fail {
            Some(errno) => Err(errno),
            None => Ok(()),
        }
    }

    fn fd(&self) -> RawFd {
        let mut next = self.next_fd.borrow_mut();
        *next = (*next).max(100) + 1;
        *next - 1
    }
}

fn show(s: Option<&CStr>) -> String {
    s.map_or_else(|| "-".to_string(), |s| s.to_string_lossy().into_owned())
}

impl Syscall for RecordingSyscall {
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> Result<(), Errno> {
        self.record(format!(
            "mount {} {} {} {} {}",
            show(source),
            show(Some(target)),
            show(fstype),
            crate::plan::describe_mount_flags(flags),
            show(data)
        ))
    }
    fn umount_detach(&self, target: &CStr) -> Result<(), Errno> {
        self.record(format!("umount_detach {}", show(Some(target))))
    }
    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> Result<(), Errno> {
        self.record(format!(
            "pivot_root {} {}",
            show(Some(new_root)),
            show(Some(put_old))
        ))
    }
    fn chdir(&self, path: &CStr) -> Result<(), Errno> {
        self.record(format!("chdir {}", show(Some(path))))
    }
    fn mkdir(&self, path: &CStr, mode: u32) -> Result<(), Errno> {
        self.record(format!("mkdir {} {mode:o}", show(Some(path))))
    }
    fn lchown(&self, path: &CStr, uid: u32, gid: u32) -> Result<(), Errno> {
        self.record(format!("lchown {} {uid}:{gid}", show(Some(path))))
    }
    fn mknod(&self, path: &CStr, mode: u32, dev: u64) -> Result<(), Errno> {
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        self.record(format!(
            "mknod {} {mode:o} {major}:{minor}",
            show(Some(path))
        ))
    }
    fn write_file(&self, path: &CStr, bytes: &[u8]) -> Result<(), Errno> {
        self.record(format!(
            "write_file {} {:?}",
            show(Some(path)),
            String::from_utf8_lossy(bytes)
        ))
    }
    fn symlink(&self, target: &CStr, link: &CStr) -> Result<(), Errno> {
        self.record(format!(
            "symlink {} -> {}",
            show(Some(link)),
            show(Some(target))
        ))
    }
    fn open_tree(&self, path: &CStr) -> Result<RawFd, Errno> {
        let fd = self.fd();
        self.record(format!("open_tree {} = {fd}", show(Some(path))))
            .map(|()| fd)
    }
    fn move_mount(&self, mount_fd: RawFd, target: &CStr) -> Result<(), Errno> {
        self.record(format!("move_mount {mount_fd} {}", show(Some(target))))
    }
    fn fsopen(&self, fstype: &CStr) -> Result<RawFd, Errno> {
        let fd = self.fd();
        self.record(format!("fsopen {} = {fd}", show(Some(fstype))))
            .map(|()| fd)
    }
    fn fsconfig_string(&self, fs_fd: RawFd, key: &CStr, value: &CStr) -> Result<(), Errno> {
        self.record(format!(
            "fsconfig {fs_fd} {}={}",
            show(Some(key)),
            show(Some(value))
        ))
    }
    fn fsconfig_create(&self, fs_fd: RawFd) -> Result<(), Errno> {
        self.record(format!("fsconfig {fs_fd} create"))
    }
    fn fsmount(&self, fs_fd: RawFd) -> Result<RawFd, Errno> {
        let fd = self.fd();
        self.record(format!("fsmount {fs_fd} = {fd}")).map(|()| fd)
    }
    fn close(&self, fd: RawFd) {
        let _ = self.record(format!("close {fd}"));
    }
    fn sethostname(&self, name: &CStr) -> Result<(), Errno> {
        self.record(format!("sethostname {}", show(Some(name))))
    }
    fn loopback_up(&self) -> Result<(), Errno> {
        self.record("loopback_up".to_string())
    }
    fn setgroups(&self, gids: &[libc::gid_t]) -> Result<(), Errno> {
        self.record(format!("setgroups {gids:?}"))
    }
    fn setresgid(&self, gid: u32) -> Result<(), Errno> {
        self.record(format!("setresgid {gid}"))
    }
    fn setresuid(&self, uid: u32) -> Result<(), Errno> {
        self.record(format!("setresuid {uid}"))
    }
    fn dup2(&self, from: RawFd, to: RawFd) -> Result<(), Errno> {
        self.record(format!("dup2 {from} {to}"))
    }
    fn setsid(&self) -> Result<(), Errno> {
        self.record("setsid".to_string())
    }
    fn set_parent_death_signal(&self) -> Result<(), Errno> {
        self.record("set_parent_death_signal".to_string())
    }
    fn reset_signals(&self) -> Result<(), Errno> {
        self.record("reset_signals".to_string())
    }
    fn write_all(&self, fd: RawFd, bytes: &[u8]) -> Result<(), Errno> {
        self.record(format!("write {fd} {:?}", String::from_utf8_lossy(bytes)))
    }
    fn open_pty(&self, ptmx: &CStr) -> Result<(RawFd, RawFd), Errno> {
        let (master, slave) = (self.fd(), self.fd());
        self.record(format!("open_pty {} = {master},{slave}", show(Some(ptmx))))
            .map(|()| (master, slave))
    }
    fn send_fd(&self, socket: RawFd, fd: RawFd) -> Result<(), Errno> {
        self.record(format!("send_fd {socket} {fd}"))
    }
    fn set_controlling_tty(&self, fd: RawFd) -> Result<(), Errno> {
        self.record(format!("set_controlling_tty {fd}"))
    }
    fn cloexec_from(&self, first: RawFd) -> Result<(), Errno> {
        self.record(format!("cloexec_from {first}"))
    }
    fn drop_bounding_capability(&self, number: u32) -> Result<(), Errno> {
        self.record(format!("capbset_drop {number}"))
    }
    fn set_capabilities(
        &self,
        effective: u64,
        permitted: u64,
        inheritable: u64,
    ) -> Result<(), Errno> {
        self.record(format!(
            "capset eff={effective:#x} prm={permitted:#x} inh={inheritable:#x}"
        ))
    }
    fn clear_ambient_capabilities(&self) -> Result<(), Errno> {
        self.record("ambient_clear".to_string())
    }
    fn mount_setattr(&self, path: &CStr, attributes: u64) -> Result<(), Errno> {
        let mut names = Vec::new();
        if attributes & MOUNT_ATTR_RDONLY != 0 {
            names.push("rdonly");
        }
        if attributes & MOUNT_ATTR_NODEV != 0 {
            names.push("nodev");
        }
        self.record(format!(
            "mount_setattr {} {}",
            show(Some(path)),
            names.join("|")
        ))
    }
    fn execve(&self, path: &CStr, argv: &[*const c_char], envp: &[*const c_char]) -> Errno {
        // SAFETY: the arrays are NULL-terminated and point at live C strings (built by the plan).
        let strings = |array: &[*const c_char]| -> Vec<String> {
            array
                .iter()
                .take_while(|p| !p.is_null())
                .map(|p| unsafe { CStr::from_ptr(*p) }.to_string_lossy().into_owned())
                .collect()
        };
        match self.record(format!(
            "execve {} {:?} {:?}",
            show(Some(path)),
            strings(argv),
            strings(envp)
        )) {
            Err(errno) => errno,
            // A real execve does not return on success; the fake reports "no error".
            Ok(()) => Errno::UnknownErrno,
        }
    }
    fn fork_init(&self, tty: bool) -> Result<(), Errno> {
        self.record(format!("fork_init tty={tty}"))
    }
    fn install_seccomp_filter(&self, program: &[libc::sock_filter]) -> Result<(), Errno> {
        self.record(format!("seccomp {} instructions", program.len()))
    }
}

//! What a sandbox may do to the host: Docker's default confinement, and the ways to loosen it.
//!
//! A sandbox runs as root in the host's user namespace, so without confinement a RUN could mknod the
//! host's disk, mount filesystems, load modules or read `/proc/kcore`. Like runc under Docker, kiln
//! keeps only Docker's 14 default capabilities (bounding, effective and permitted sets; none for a
//! non-root user, whose effective and permitted sets the kernel clears on `setuid`), hides Docker's
//! masked paths under `/proc` and `/sys`, and makes its read-only paths read-only. Docker denies
//! device access with the devices cgroup; kiln has no daemon to own one, so it mounts everything the
//! command can write to `nodev` instead (see `docs/sandbox.md`, "Confinement").
//!
//! [`Confinement::privileged`] (`kiln run --privileged`, `RUN --security=insecure`) keeps every
//! capability, masks nothing, leaves device nodes usable and installs no seccomp filter.

use std::sync::OnceLock;

use thiserror::Error;

/// A capability name that is not one of Linux's.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CapabilityError {
    #[error(
        "unknown capability {0:?} (expected a name such as NET_ADMIN or CAP_NET_ADMIN, or ALL)"
    )]
    Unknown(String),
}

/// Linux's capabilities by number (capability.h), without the `CAP_` prefix.
const CAPABILITY_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Docker's default capabilities (moby `oci/caps/defaults.go`).
const DOCKER_DEFAULT: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// A set of capabilities as the kernel's bit mask (bit n = capability n).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CapabilitySet(u64);

impl CapabilitySet {
    /// No capability.
    pub const fn empty() -> CapabilitySet {
        CapabilitySet(0)
    }

    /// Every capability kiln knows by name (the kernel's own list may be shorter: see
    /// [`host_last_capability`]).
    pub const fn all() -> CapabilitySet {
        CapabilitySet((1u64 << CAPABILITY_NAMES.len()) - 1)
    }

    /// Docker's default 14.
    pub fn docker_default() -> CapabilitySet {
        let mut set = CapabilitySet::empty();
        for name in DOCKER_DEFAULT {
            if let Some(number) = CAPABILITY_NAMES.iter().position(|n| *n == name) {
                set.0 |= 1 << number;
            }
        }
        set
    }

    /// The mask as the kernel shows it (`CapBnd` in /proc/self/status).
    pub const fn bits(self) -> u64 {
        self.0
    }

    pub const fn from_bits(bits: u64) -> CapabilitySet {
        CapabilitySet(bits)
    }

    pub const fn contains(self, number: u32) -> bool {
        number < 64 && self.0 & (1 << number) != 0
    }

    /// The capability numbers in the set, ascending.
    pub fn numbers(self) -> impl Iterator<Item = u32> {
        (0..64).filter(move |n| self.contains(*n))
    }

    /// Docker's `--cap-add`/`--cap-drop` over its default set, as moby's `TweakCapabilities`: `ALL` in
    /// the adds keeps every capability but the drops; `ALL` in the drops keeps only the adds;
    /// otherwise the default minus the drops plus the adds. Names are case-insensitive, with or
    /// without `CAP_`.
    ///
    /// # Errors
    /// A name that is not a capability.
    pub fn docker_default_with(
        adds: &[String],
        drops: &[String],
    ) -> Result<CapabilitySet, CapabilityError> {
        let parse_all = |names: &[String]| -> Result<(bool, CapabilitySet), CapabilityError> {
            let mut all = false;
            let mut set = CapabilitySet::empty();
            for name in names {
                match parse_capability(name)? {
                    None => all = true,
                    Some(number) => set.0 |= 1 << number,
                }
            }
            Ok((all, set))
        };
        let (add_all, added) = parse_all(adds)?;
        let (drop_all, dropped) = parse_all(drops)?;
        Ok(if add_all {
            CapabilitySet(CapabilitySet::all().0 & !dropped.0)
        } else if drop_all {
            added
        } else {
            CapabilitySet((CapabilitySet::docker_default().0 & !dropped.0) | added.0)
        })
    }
}

/// The number of a capability name (`NET_ADMIN`, `cap_net_admin`), or `None` for `ALL`.
///
/// # Errors
/// A name that is not a capability.
pub fn parse_capability(name: &str) -> Result<Option<u32>, CapabilityError> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if bare == "ALL" {
        return Ok(None);
    }
    CAPABILITY_NAMES
        .iter()
        .position(|n| *n == bare)
        .map(|number| Some(number as u32))
        .ok_or_else(|| CapabilityError::Unknown(name.to_string()))
}

/// How confined a sandbox is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Confinement {
    /// What a root command keeps (bounding, effective and permitted sets); a non-root user gets the
    /// same bounding set and nothing effective, as in Docker.
    pub capabilities: CapabilitySet,
    /// Docker's `--privileged`: every capability root has (`capabilities` is not applied), no masked
    /// or read-only paths, and device nodes usable (no `nodev`).
    pub privileged: bool,
    /// Docker's default seccomp profile (`crate::seccomp`), lifted per capability; `false` is
    /// `--security-opt seccomp=unconfined`. Never applied when `privileged`.
    pub seccomp: bool,
}

impl Default for Confinement {
    fn default() -> Confinement {
        Confinement::docker_default()
    }
}

impl Confinement {
    /// Docker's default container: 14 capabilities, masks, no device access.
    pub fn docker_default() -> Confinement {
        Confinement {
            capabilities: CapabilitySet::docker_default(),
            privileged: false,
            seccomp: true,
        }
    }

    /// `--privileged` / `RUN --security=insecure`: every capability, no masks, devices usable.
    pub fn privileged() -> Confinement {
        Confinement {
            capabilities: CapabilitySet::all(),
            privileged: true,
            seccomp: false,
        }
    }
}

/// Docker's masked paths (moby `oci/defaults.go`): each hidden under an empty read-only tmpfs (dirs)
/// or `/dev/null` (files). Paths the kernel does not have are skipped.
pub(crate) const MASKED_PATHS: [(&str, MaskKind); 11] = [
    ("/proc/acpi", MaskKind::Dir),
    ("/proc/asound", MaskKind::Dir),
    ("/proc/kcore", MaskKind::File),
    ("/proc/keys", MaskKind::File),
    ("/proc/latency_stats", MaskKind::File),
    ("/proc/timer_list", MaskKind::File),
    ("/proc/timer_stats", MaskKind::File),
    ("/proc/sched_debug", MaskKind::File),
    ("/proc/scsi", MaskKind::Dir),
    ("/sys/firmware", MaskKind::Dir),
    ("/sys/devices/virtual/powercap", MaskKind::Dir),
];

/// Docker's read-only paths (moby `oci/defaults.go`).
pub(crate) const READ_ONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// How a masked path is hidden.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MaskKind {
    Dir,
    File,
}

/// Facts about the host's capabilities, read once per process: the kernel's last capability and the
/// capabilities this process may hand out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostCapabilities {
    pub last: u32,
    pub permitted: CapabilitySet,
}

/// The highest capability number of the running kernel (`/proc/sys/kernel/cap_last_cap`), and this
/// process's permitted set (`CapPrm`), read once. Falls back to kiln's list and every capability when
/// the files cannot be read (the child's syscalls then report the real problem).
pub(crate) fn host_capabilities() -> HostCapabilities {
    static HOST: OnceLock<HostCapabilities> = OnceLock::new();
    *HOST.get_or_init(|| {
        let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
            .unwrap_or(CAPABILITY_NAMES.len() as u32 - 1)
            .min(63);
        let permitted = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status.lines().find_map(|line| {
                    line.strip_prefix("CapPrm:")
                        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
                })
            })
            .map_or(CapabilitySet::all(), CapabilitySet::from_bits);
        HostCapabilities { last, permitted }
    })
}

/// The largest capability number the running kernel knows (`/proc/sys/kernel/cap_last_cap`).
pub fn host_last_capability() -> u32 {
    host_capabilities().last
}

/// The confinement and identity steps that end every sandbox setup (and `kiln exec`'s), as runc
/// applies them for Docker: the seccomp filter after every step that needs what it denies and
/// before the identity (installing it without `no_new_privs` takes CAP_SYS_ADMIN, which a non-root
/// user loses at setuid and root at capset); the bounding set (needs CAP_SETPCAP) while root's full
/// set is still in hand; the identity, with the primary gid leading the supplementary list as
/// containerd and Docker do since CVE-2023-25173; then the capability sets: root keeps the kept set,
/// anyone else gets none, inheritable stays empty (Docker since CVE-2022-24769).
///
/// # Errors
/// [`crate::plan::PlanError`] when the seccomp filter cannot be compiled.
pub(crate) fn identity_steps(
    confinement: &Confinement,
    uid: u32,
    gid: u32,
    extra_gids: &[u32],
) -> Result<Vec<crate::plan::Step>, crate::plan::PlanError> {
    use crate::plan::Step;
    let host = host_capabilities();
    let kept = confinement.capabilities.bits() & host.permitted.bits();
    let mut groups = vec![gid];
    groups.extend(extra_gids.iter().filter(|g| **g != gid));
    let mut steps = Vec::new();
    if confinement.seccomp
        && !confinement.privileged
        && let Some(program) = crate::seccomp::default_program(confinement.capabilities)?
    {
        steps.push(Step::InstallSeccomp(program));
    }
    if !confinement.privileged {
        steps.push(Step::DropBoundingCapabilities {
            keep: kept,
            last: host.last,
        });
    }
    steps.push(Step::SetGroups(groups));
    steps.push(Step::SetGid(gid));
    steps.push(Step::SetUid(uid));
    if !confinement.privileged {
        let effective = if uid == 0 { kept } else { 0 };
        steps.push(Step::SetCapabilities {
            effective,
            permitted: effective,
            inheritable: 0,
        });
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn docker_default_is_the_kernel_mask_docker_shows() {
        // `grep CapBnd /proc/self/status` in `docker run --rm debian` on any kernel.
        assert_eq!(CapabilitySet::docker_default().bits(), 0xa804_25fb);
        assert_eq!(CapabilitySet::docker_default().numbers().count(), 14);
    }

    #[test]
    fn names_parse_like_docker() {
        assert_eq!(parse_capability("SYS_ADMIN").unwrap(), Some(21));
        assert_eq!(parse_capability("cap_sys_admin").unwrap(), Some(21));
        assert_eq!(
            parse_capability("CAP_CHECKPOINT_RESTORE").unwrap(),
            Some(40)
        );
        assert_eq!(parse_capability("all").unwrap(), None);
        assert_eq!(
            parse_capability("SYS_WIZARD").unwrap_err(),
            CapabilityError::Unknown("SYS_WIZARD".into())
        );
    }

    #[test]
    fn add_and_drop_follow_mobys_precedence() {
        let default = CapabilitySet::docker_default();
        let with_admin = CapabilitySet::docker_default_with(&names(&["SYS_ADMIN"]), &[]).unwrap();
        assert_eq!(with_admin.bits(), default.bits() | 1 << 21);
        let without_chown = CapabilitySet::docker_default_with(&[], &names(&["chown"])).unwrap();
        assert_eq!(without_chown.bits(), default.bits() & !1);
        let only_kill =
            CapabilitySet::docker_default_with(&names(&["KILL"]), &names(&["ALL"])).unwrap();
        assert_eq!(only_kill.bits(), 1 << 5);
        let all_but_admin =
            CapabilitySet::docker_default_with(&names(&["ALL"]), &names(&["SYS_ADMIN"])).unwrap();
        assert_eq!(
            all_but_admin.bits(),
            CapabilitySet::all().bits() & !(1 << 21)
        );
        assert!(CapabilitySet::docker_default_with(&names(&["NOPE"]), &[]).is_err());
    }

    #[test]
    fn host_facts_are_sane() {
        let host = host_capabilities();
        assert!(
            host.last >= 36,
            "every supported kernel has AUDIT_READ (36)"
        );
        assert!(host.last < 64);
    }
}

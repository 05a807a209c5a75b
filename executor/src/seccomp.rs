//! The default seccomp filter of a confined sandbox: the syscalls Docker's default profile (moby
//! `profiles/seccomp/default.json`) refuses a container, as a deny-list.
//!
//! Docker's profile is an allow-list whose entries depend on the container's capabilities; kiln
//! compiles the complement that matters: each syscall of [`deny_rules`] that the profile leaves out
//! (or ties to a capability the sandbox lacks) answers `EPERM`, everything else is allowed, so a
//! syscall newer than the profile is allowed here where Docker refuses it. Adding a capability
//! (`--cap-add`) lifts the rules Docker ties to it (SYS_ADMIN: mount, unshare, setns...; SYS_MODULE:
//! init_module...; SYS_TIME: settimeofday...). Like Docker, `clone3` answers `ENOSYS` without
//! SYS_ADMIN so that libc falls back to `clone`, whose flags a filter can read (clone3's are behind a
//! pointer). On x86_64, x32-ABI syscall numbers answer `ENOSYS` (they would otherwise bypass a
//! deny-list written in x86_64 numbers), and a syscall of another ABI (32-bit `int 0x80`) kills
//! the process: seccompiler's filters check the architecture and only know the native one.
//!
//! Programs are compiled once per process and capability set ([`default_program`]), in the
//! parent; the child only hands the ready instructions to `seccomp(2)` (see
//! [`crate::plan::Step::InstallSeccomp`] and `docs/sandbox.md`, "Seccomp").

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
};
use thiserror::Error;

use crate::confinement::{CapabilitySet, parse_capability};

/// Why the filter could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SeccompError {
    #[error("compiling the seccomp filter: {0}")]
    Compile(String),
}

/// A compiled BPF program, ready for `seccomp(SECCOMP_SET_MODE_FILTER)`.
pub struct SeccompProgram {
    instructions: Vec<libc::sock_filter>,
}

impl SeccompProgram {
    /// The instructions, in order.
    pub fn instructions(&self) -> &[libc::sock_filter] {
        &self.instructions
    }
}

impl std::fmt::Debug for SeccompProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SeccompProgram({} instructions)",
            self.instructions.len()
        )
    }
}

/// A syscall to refuse unless the sandbox holds one of `lifted_by` (capability names; empty: always
/// refused), optionally only when its arguments match `when`.
struct DenyRule {
    syscall: i64,
    lifted_by: &'static [&'static str],
    when: When,
}

/// Which calls of a denied syscall are refused.
#[derive(Clone, Copy)]
enum When {
    Always,
    /// `clone` creating a namespace: any of the CLONE_NEW* bits in the flags (argument 0).
    NamespaceFlags,
    /// `personality` with a persona Docker does not allow (argument 0 not one of these).
    PersonaNotIn(&'static [u64]),
    /// `socket` of this address family (argument 0).
    Family(u64),
}

/// The CLONE_NEW* flags Docker's profile masks (0x7E020000).
const NAMESPACE_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];

/// The personas Docker allows: PER_LINUX, UNAME26, PER_LINUX32, PER_LINUX32|UNAME26, and the query.
const ALLOWED_PERSONAS: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

const AF_VSOCK: u64 = 40;

const SYS_ADMIN: &[&str] = &["SYS_ADMIN"];

/// Docker's profile as a deny-list (see the module doc). Each entry: syscall, the capabilities that
/// lift it (Docker's `includes.caps`), and which calls.
fn deny_rules() -> Vec<DenyRule> {
    let always = |syscall: libc::c_long, lifted_by: &'static [&'static str]| DenyRule {
        syscall,
        lifted_by,
        when: When::Always,
    };
    let mut rules = vec![
        // Never in Docker's allow-list.
        always(libc::SYS_add_key, &[]),
        always(libc::SYS_keyctl, &[]),
        always(libc::SYS_request_key, &[]),
        always(libc::SYS_kexec_load, &[]),
        always(libc::SYS_kexec_file_load, &[]),
        always(libc::SYS_userfaultfd, &[]),
        always(libc::SYS_swapon, &[]),
        always(libc::SYS_swapoff, &[]),
        // In none of the profile's lists, so refused even with SYS_ADMIN, as under Docker.
        always(libc::SYS_pivot_root, &[]),
        always(libc::SYS_migrate_pages, &[]),
        always(libc::SYS_move_pages, &[]),
        // SYS_ADMIN's group.
        always(libc::SYS_fanotify_init, SYS_ADMIN),
        always(libc::SYS_fsconfig, SYS_ADMIN),
        always(libc::SYS_fsmount, SYS_ADMIN),
        always(libc::SYS_fsopen, SYS_ADMIN),
        always(libc::SYS_fspick, SYS_ADMIN),
        always(libc::SYS_lookup_dcookie, SYS_ADMIN),
        always(libc::SYS_mount, SYS_ADMIN),
        always(libc::SYS_mount_setattr, SYS_ADMIN),
        always(libc::SYS_move_mount, SYS_ADMIN),
        always(libc::SYS_open_tree, SYS_ADMIN),
        always(libc::SYS_quotactl, SYS_ADMIN),
        always(libc::SYS_quotactl_fd, SYS_ADMIN),
        always(libc::SYS_setdomainname, SYS_ADMIN),
        always(libc::SYS_sethostname, SYS_ADMIN),
        always(libc::SYS_setns, SYS_ADMIN),
        always(libc::SYS_umount2, SYS_ADMIN),
        always(libc::SYS_unshare, SYS_ADMIN),
        DenyRule {
            syscall: libc::SYS_clone,
            lifted_by: SYS_ADMIN,
            when: When::NamespaceFlags,
        },
        always(libc::SYS_bpf, &["SYS_ADMIN", "BPF"]),
        always(libc::SYS_perf_event_open, &["SYS_ADMIN", "PERFMON"]),
        always(libc::SYS_syslog, &["SYS_ADMIN", "SYSLOG"]),
        // One capability each.
        always(libc::SYS_open_by_handle_at, &["DAC_READ_SEARCH"]),
        always(libc::SYS_reboot, &["SYS_BOOT"]),
        always(libc::SYS_chroot, &["SYS_CHROOT"]),
        always(libc::SYS_delete_module, &["SYS_MODULE"]),
        always(libc::SYS_init_module, &["SYS_MODULE"]),
        always(libc::SYS_finit_module, &["SYS_MODULE"]),
        always(libc::SYS_acct, &["SYS_PACCT"]),
        always(libc::SYS_kcmp, &["SYS_PTRACE"]),
        always(libc::SYS_pidfd_getfd, &["SYS_PTRACE"]),
        always(libc::SYS_process_madvise, &["SYS_PTRACE"]),
        // ptrace, process_vm_readv and process_vm_writev are allowed (the profile's kernel >= 4.8).
        always(libc::SYS_settimeofday, &["SYS_TIME"]),
        always(libc::SYS_clock_settime, &["SYS_TIME"]),
        always(libc::SYS_vhangup, &["SYS_TTY_CONFIG"]),
        always(libc::SYS_get_mempolicy, &["SYS_NICE"]),
        always(libc::SYS_mbind, &["SYS_NICE"]),
        always(libc::SYS_set_mempolicy, &["SYS_NICE"]),
        always(libc::SYS_set_mempolicy_home_node, &["SYS_NICE"]),
        DenyRule {
            syscall: libc::SYS_personality,
            lifted_by: &[],
            when: When::PersonaNotIn(ALLOWED_PERSONAS),
        },
        DenyRule {
            syscall: libc::SYS_socket,
            lifted_by: &[],
            when: When::Family(AF_VSOCK),
        },
    ];
    // Syscalls only x86_64 has (aarch64 never had these old interfaces).
    #[cfg(target_arch = "x86_64")]
    rules.extend([
        always(libc::SYS_iopl, &["SYS_RAWIO"]),
        always(libc::SYS_ioperm, &["SYS_RAWIO"]),
        // Removed from the kernel (libc no longer names them); x86_64's numbers, asm/unistd_64.h.
        always(174, &[]), // create_module
        always(177, &[]), // get_kernel_syms
        always(178, &[]), // query_module
        always(libc::SYS_nfsservctl, &[]),
        always(libc::SYS_uselib, &[]),
        always(libc::SYS_ustat, &[]),
        always(libc::SYS_sysfs, &[]),
        always(libc::SYS__sysctl, &[]),
    ]);
    rules
}

/// Whether `capabilities` lifts a rule tied to `names`.
fn lifted(capabilities: CapabilitySet, names: &[&str]) -> bool {
    names.iter().any(
        |name| matches!(parse_capability(name), Ok(Some(number)) if capabilities.contains(number)),
    )
}

fn condition(
    op: SeccompCmpOp,
    length: SeccompCmpArgLen,
    value: u64,
) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(0, length, op, value).map_err(|e| SeccompError::Compile(e.to_string()))
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SeccompError> {
    SeccompRule::new(conditions).map_err(|e| SeccompError::Compile(e.to_string()))
}

/// The argument conditions of one rule (an empty list: every call).
fn rule_chain(when: When) -> Result<Vec<SeccompRule>, SeccompError> {
    match when {
        When::Always => Ok(Vec::new()),
        // Any namespace bit set: one rule per bit (rules of a syscall are OR-ed).
        When::NamespaceFlags => NAMESPACE_FLAGS
            .iter()
            .map(|flag| {
                rule(vec![condition(
                    SeccompCmpOp::MaskedEq(*flag),
                    SeccompCmpArgLen::Qword,
                    *flag,
                )?])
            })
            .collect(),
        // Not any allowed value: the conditions of one rule are AND-ed. The kernel reads the
        // persona as an unsigned int, so only the low 32 bits count.
        When::PersonaNotIn(allowed) => Ok(vec![rule(
            allowed
                .iter()
                .map(|value| condition(SeccompCmpOp::Ne, SeccompCmpArgLen::Dword, *value))
                .collect::<Result<_, _>>()?,
        )?]),
        When::Family(family) => Ok(vec![rule(vec![condition(
            SeccompCmpOp::Eq,
            SeccompCmpArgLen::Dword,
            family,
        )?])?]),
    }
}

/// The kernel's native architecture for seccompiler, or `None` where it has none.
fn native_arch() -> Option<TargetArch> {
    TargetArch::try_from(std::env::consts::ARCH).ok()
}

/// First bit of x32-ABI syscall numbers (x86_64's `__X32_SYSCALL_BIT`).
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const SECCOMP_DATA_NR_OFFSET: u32 = 0;

fn bpf_stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn bpf_jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// Instructions run before seccompiler's program, for what it cannot say (one action per filter,
/// no number ranges): `clone3` (without SYS_ADMIN) and, on x86_64, x32 numbers answer ENOSYS.
fn enosys_prefix(block_clone3: bool) -> Vec<libc::sock_filter> {
    let enosys = libc::SECCOMP_RET_ERRNO | (libc::ENOSYS as u32 & libc::SECCOMP_RET_DATA);
    let mut checks = Vec::new();
    #[cfg(target_arch = "x86_64")]
    checks.push((libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K, X32_SYSCALL_BIT));
    if block_clone3 {
        checks.push((
            libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K,
            libc::SYS_clone3 as u32,
        ));
    }
    if checks.is_empty() {
        return Vec::new();
    }
    // load nr; each check jumps to the ENOSYS return when true; else skip over that return.
    let mut prefix = vec![bpf_stmt(
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        SECCOMP_DATA_NR_OFFSET,
    )];
    let count = checks.len();
    for (index, (code, k)) in checks.into_iter().enumerate() {
        // Instructions between this one and the ENOSYS return: the checks after it and the skip.
        let to_return = (count - index) as u8;
        prefix.push(bpf_jump(code, k, to_return, 0));
    }
    prefix.push(bpf_stmt(libc::BPF_JMP | libc::BPF_JA, 1));
    prefix.push(bpf_stmt(libc::BPF_RET | libc::BPF_K, enosys));
    prefix
}

/// Compiles the deny-list for a sandbox holding `capabilities`.
///
/// # Errors
/// seccompiler refusing the rules (a bug in the table) or the architecture.
pub fn compile(
    capabilities: CapabilitySet,
    arch: TargetArch,
) -> Result<SeccompProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for deny in deny_rules() {
        if lifted(capabilities, deny.lifted_by) {
            continue;
        }
        rules.insert(deny.syscall, rule_chain(deny.when)?);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| SeccompError::Compile(e.to_string()))?;
    let body: seccompiler::BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Compile(e.to_string()))?;
    let mut instructions = enosys_prefix(!lifted(capabilities, SYS_ADMIN));
    instructions.extend(body.into_iter().map(|i| libc::sock_filter {
        code: i.code,
        jt: i.jt,
        jf: i.jf,
        k: i.k,
    }));
    if instructions.len() > usize::from(u16::MAX) {
        return Err(SeccompError::Compile(format!(
            "{} instructions do not fit a filter",
            instructions.len()
        )));
    }
    Ok(SeccompProgram { instructions })
}

/// The default filter for `capabilities`, compiled once per process and capability set; `None` on
/// an architecture seccompiler does not know (warned about once: such sandboxes run unfiltered).
///
/// # Errors
/// See [`compile`].
pub fn default_program(
    capabilities: CapabilitySet,
) -> Result<Option<Arc<SeccompProgram>>, SeccompError> {
    static CACHE: OnceLock<Mutex<HashMap<u64, Arc<SeccompProgram>>>> = OnceLock::new();
    let Some(arch) = native_arch() else {
        static WARNED: OnceLock<()> = OnceLock::new();
        WARNED.get_or_init(|| {
            tracing::warn!(
                arch = std::env::consts::ARCH,
                "no seccomp filter for this architecture: sandboxes run without one"
            );
        });
        return Ok(None);
    };
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    // A poisoned lock only means another thread panicked mid-insert; the map is still usable.
    let mut programs = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(program) = programs.get(&capabilities.bits()) {
        return Ok(Some(Arc::clone(program)));
    }
    let program = Arc::new(compile(capabilities, arch)?);
    programs.insert(capabilities.bits(), Arc::clone(&program));
    Ok(Some(program))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syscalls_in(program: &SeccompProgram) -> Vec<u32> {
        // seccompiler compares the syscall number with `jeq k` and an immediate.
        program
            .instructions()
            .iter()
            .filter(|i| u32::from(i.code) == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K)
            .map(|i| i.k)
            .collect()
    }

    #[test]
    fn default_denies_mount_and_cap_add_lifts_it() {
        let Some(arch) = native_arch() else { return };
        let default = compile(CapabilitySet::docker_default(), arch).unwrap();
        let numbers = syscalls_in(&default);
        for denied in [
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_keyctl,
            libc::SYS_clone3,
        ] {
            assert!(numbers.contains(&(denied as u32)), "{denied} not denied");
        }
        let admin = CapabilitySet::from_bits(CapabilitySet::docker_default().bits() | 1 << 21);
        let numbers = syscalls_in(&compile(admin, arch).unwrap());
        for lifted in [
            libc::SYS_mount,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_clone3,
        ] {
            assert!(!numbers.contains(&(lifted as u32)), "{lifted} still denied");
        }
        // Not tied to SYS_ADMIN: still refused.
        assert!(numbers.contains(&(libc::SYS_keyctl as u32)));
        assert!(numbers.contains(&(libc::SYS_init_module as u32)));
    }

    #[test]
    fn capabilities_lift_only_their_own_rules() {
        let Some(arch) = native_arch() else { return };
        let default = CapabilitySet::docker_default().bits();
        let module = compile(CapabilitySet::from_bits(default | 1 << 16), arch).unwrap();
        let numbers = syscalls_in(&module);
        assert!(!numbers.contains(&(libc::SYS_init_module as u32)));
        assert!(numbers.contains(&(libc::SYS_mount as u32)));
        let time = compile(CapabilitySet::from_bits(default | 1 << 25), arch).unwrap();
        assert!(!syscalls_in(&time).contains(&(libc::SYS_settimeofday as u32)));
        // Docker's default keeps SYS_CHROOT, so chroot is allowed; dropping it denies chroot.
        assert!(
            !syscalls_in(&compile(CapabilitySet::docker_default(), arch).unwrap())
                .contains(&(libc::SYS_chroot as u32))
        );
        let no_chroot = compile(CapabilitySet::from_bits(default & !(1 << 18)), arch).unwrap();
        assert!(syscalls_in(&no_chroot).contains(&(libc::SYS_chroot as u32)));
    }

    #[test]
    fn programs_are_cached_per_capability_set() {
        let first = default_program(CapabilitySet::docker_default()).unwrap();
        let second = default_program(CapabilitySet::docker_default()).unwrap();
        match (first, second) {
            (Some(a), Some(b)) => assert!(Arc::ptr_eq(&a, &b)),
            (None, None) => assert!(native_arch().is_none()),
            _ => panic!("the cache answered differently"),
        }
    }

    #[test]
    fn prefix_jumps_land_on_the_enosys_return() {
        let prefix = enosys_prefix(true);
        let ret = prefix.len() - 1;
        for (index, instruction) in prefix.iter().enumerate() {
            let code = u32::from(instruction.code);
            if code & 0x07 == libc::BPF_JMP && code != libc::BPF_JMP | libc::BPF_JA {
                assert_eq!(index + 1 + usize::from(instruction.jt), ret);
                assert_eq!(instruction.jf, 0);
            }
        }
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        assert_eq!(prefix[ret].k, enosys);
    }
}

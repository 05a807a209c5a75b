//! Resource limits for one sandbox (`--memory`, `--pids-limit`) on cgroup v1 and cgroup v2 hosts.
//!
//! Where each controller lives is read per controller from `/proc/self/mountinfo` and
//! `/proc/self/cgroup`: a cgroup v1 hierarchy mounting it wins (a v1 or hybrid host, like the CI
//! machine: `/sys/fs/cgroup/memory`, `/sys/fs/cgroup/pids`), otherwise the cgroup2 hierarchy when it
//! offers the controller. kiln's cgroups are made *below this process's own cgroup* in each hierarchy
//! (`<mount>/<own path>/kiln-<pid>-<n>`), so kiln works nested — in a container, or in a cgroup a
//! supervisor put it in — without touching anyone else's part of the tree. cgroup2 forbids a cgroup
//! that holds processes (other than the root) from handing controllers to children, so when ours
//! cannot, the group goes beside it, below our parent, which has delegated those controllers to us.
//!
//! The limits follow Docker's `--memory` without `--memory-swap`: as much swap again as memory.
//! v1 `memory.limit_in_bytes` = limit and `memory.memsw.limit_in_bytes` = 2 × limit where swap
//! accounting exists; v2 `memory.max` = limit and `memory.swap.max` = limit; `pids.max` on both.
//!
//! The parent creates the groups and opens each `cgroup.procs`; the child writes "0" to every one of
//! them before exec (plain writes, safe after `clone`). Dropping [`SandboxCgroup`] removes the groups;
//! groups left behind by a kiln that crashed (their owner pid is gone) are removed the next time a
//! group is made beside them. [`SandboxCgroup::exit_status`] turns a failed status into
//! [`ExitStatus::OutOfMemory`] when the kernel's OOM killer struck in the group, as Docker reports
//! `OOMKilled`. Where no controller is available the sandbox runs without limits and a warning says
//! why.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

use crate::sandbox::ExitStatus;

const MOUNTINFO: &str = "/proc/self/mountinfo";
const SELF_CGROUP: &str = "/proc/self/cgroup";
/// Every group kiln makes is named `kiln-<pid of the kiln process>-<counter>`.
const GROUP_PREFIX: &str = "kiln-";
/// Docker's smallest `--memory` (its daemon refuses less: "Minimum memory limit allowed is 6MB").
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;

/// Errors creating or configuring a sandbox cgroup.
#[derive(Debug, Error)]
pub enum CgroupError {
    #[error("cgroup: {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

/// A size or limit given on the command line that cannot be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SizeError {
    #[error(
        "invalid size {0:?}: expected a number with an optional unit b, k, m, g, t or p (e.g. 64m)"
    )]
    Invalid(String),
    #[error("size {0:?} is too large")]
    TooLarge(String),
    #[error("memory limit {0:?} is below the minimum of 6 MiB")]
    BelowMinimum(String),
}

/// Limits for one sandbox; `None` = unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceLimits {
    pub memory_bytes: Option<u64>,
    pub pids_max: Option<u64>,
}

impl ResourceLimits {
    pub fn is_empty(&self) -> bool {
        self.memory_bytes.is_none() && self.pids_max.is_none()
    }
}

/// Parses a size as Docker's `--memory` does (`RAMInBytes` of go-units): a number, optionally with
/// a fraction, an optional space, then an optional unit k, m, g, t or p (any case, powers of 1024)
/// optionally followed by `i` and/or `b`: `64m`, `64MB`, `512MiB`, `1.5g`, `100` (bytes), `100b`.
///
/// # Errors
/// [`SizeError::Invalid`] for anything else, [`SizeError::TooLarge`] past `u64`.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let invalid = || SizeError::Invalid(text.to_string());
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || (number.contains('.') && fraction.is_empty()) || fraction.contains('.') {
        return Err(invalid());
    }
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    let (shift, rest) = match unit.chars().next() {
        Some(c @ ('k' | 'm' | 'g' | 't' | 'p')) => {
            let shift = 10 * (1 + "kmgtp".find(c).unwrap_or(0) as u32);
            let rest = &unit[1..];
            (shift, rest.strip_prefix('i').unwrap_or(rest))
        }
        _ => (0, unit.as_str()),
    };
    if !(rest.is_empty() || rest == "b") {
        return Err(invalid());
    }
    let too_large = || SizeError::TooLarge(text.to_string());
    let multiplier = 1u128 << shift;
    let whole: u128 = whole.parse().map_err(|_| too_large())?;
    let mut bytes = whole.checked_mul(multiplier).ok_or_else(too_large)?;
    if !fraction.is_empty() {
        // Docker multiplies a float and truncates; exact integer arithmetic gives the same bytes
        // without rounding surprises. Digits past the 19th cannot change the result.
        let digits = &fraction[..fraction.len().min(19)];
        let numerator: u128 = digits.parse().map_err(|_| invalid())?;
        bytes += numerator * multiplier / 10u128.pow(digits.len() as u32);
    }
    u64::try_from(bytes).map_err(|_| too_large())
}

/// Parses `--memory` as Docker does: [`parse_size`], with 0 meaning no limit and anything else at
/// least [`MIN_MEMORY_BYTES`].
///
/// # Errors
/// As [`parse_size`], plus [`SizeError::BelowMinimum`].
pub fn parse_memory_limit(text: &str) -> Result<Option<u64>, SizeError> {
    match parse_size(text)? {
        0 => Ok(None),
        bytes if bytes < MIN_MEMORY_BYTES => Err(SizeError::BelowMinimum(text.to_string())),
        bytes => Ok(Some(bytes)),
    }
}

/// A byte count the way people say it: `64 MiB`, `1.5 GiB`, `6000 bytes`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut unit = None;
    for (index, name) in UNITS.iter().enumerate() {
        if bytes >= 1u64 << (10 * (index + 1)) {
            unit = Some((index, *name));
        }
    }
    match unit {
        None => format!("{bytes} bytes"),
        Some((index, name)) => {
            let size = 1u64 << (10 * (index + 1));
            if bytes % size == 0 {
                format!("{} {name}", bytes / size)
            } else {
                format!("{:.1} {name}", bytes as f64 / size as f64)
            }
        }
    }
}

/// Which cgroup version a controller is used through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

/// Where one controller can be used: this process's own cgroup in the hierarchy that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub version: CgroupVersion,
    /// This process's own cgroup, as a directory on the host (e.g.
    /// `/sys/fs/cgroup/memory/process_api/<id>`).
    pub own_dir: PathBuf,
}

/// Where the controllers kiln limits with are, as detected for this process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupLayout {
    pub memory: Option<Hierarchy>,
    pub pids: Option<Hierarchy>,
}

/// Whether limits can be applied here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupSupport {
    /// Every available controller is on the unified (cgroup2) hierarchy.
    V2,
    /// At least one controller is on a cgroup v1 hierarchy (a v1 or hybrid host).
    V1,
    /// Why not: neither a v1 hierarchy nor cgroup2 offers the memory or pids controller.
    Unavailable(String),
}

/// Where this process can apply limits: see [`CgroupLayout::detect`].
pub fn detect() -> CgroupSupport {
    match CgroupLayout::detect() {
        Ok(layout) => layout.support(),
        Err(reason) => CgroupSupport::Unavailable(reason),
    }
}

/// One cgroup mount from mountinfo.
#[derive(Debug)]
struct CgroupMount {
    mount_point: PathBuf,
    /// The cgroup path mounted there ("/" unless a sub-tree was bind-mounted).
    root: String,
    version: CgroupVersion,
    /// v1 only: the controllers this hierarchy holds (from the super options).
    controllers: Vec<String>,
}

/// mountinfo escapes space, tab, newline and backslash in paths as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let octal = bytes.get(index + 1..index + 4).and_then(|digits| {
            std::str::from_utf8(digits)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[index], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                index += 4;
            }
            (byte, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup mounts in `/proc/self/mountinfo` text (`ID PARENT DEV ROOT POINT OPTS [TAGS…] - TYPE
/// SOURCE SUPEROPTS`).
fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let separator = fields.iter().position(|f| *f == "-")?;
            let version = match *fields.get(separator + 1)? {
                "cgroup" => CgroupVersion::V1,
                "cgroup2" => CgroupVersion::V2,
                _ => return None,
            };
            let controllers = match version {
                CgroupVersion::V1 => fields
                    .get(separator + 3)?
                    .split(',')
                    .map(str::to_string)
                    .collect(),
                CgroupVersion::V2 => Vec::new(),
            };
            Some(CgroupMount {
                mount_point: PathBuf::from(unescape_mountinfo(fields.get(4)?)),
                root: unescape_mountinfo(fields.get(3)?),
                version,
                controllers,
            })
        })
        .collect()
}

/// One line of `/proc/self/cgroup`: `ID:CONTROLLERS:PATH` (v2: `0::PATH`).
#[derive(Debug)]
struct Membership {
    controllers: Vec<String>,
    path: String,
}

fn parse_self_cgroup(text: &str) -> Vec<Membership> {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let _id = parts.next()?;
            let controllers = parts.next()?;
            let path = parts.next()?;
            Some(Membership {
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::to_string)
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

/// The host directory of cgroup `path` through `mount`, when the mount shows it.
fn dir_in_mount(mount: &CgroupMount, path: &str) -> Option<PathBuf> {
    let root = mount.root.trim_end_matches('/');
    let relative = path.strip_prefix(root)?;
    match relative.strip_prefix('/') {
        _ if relative.is_empty() => Some(mount.mount_point.clone()),
        Some("") => Some(mount.mount_point.clone()),
        Some(below) => Some(mount.mount_point.join(below)),
        None => None,
    }
}

impl CgroupLayout {
    /// Finds this process's own cgroup in the hierarchy of each controller.
    ///
    /// # Errors
    /// A reason to show when neither the memory nor the pids controller is usable here (or
    /// `/proc` cannot be read).
    pub fn detect() -> Result<CgroupLayout, String> {
        let read =
            |path: &str| fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"));
        let mountinfo = read(MOUNTINFO)?;
        let self_cgroup = read(SELF_CGROUP)?;
        CgroupLayout::from_proc(&mountinfo, &self_cgroup, |dir| {
            fs::read_to_string(dir.join("cgroup.controllers")).ok()
        })
    }

    /// [`CgroupLayout::detect`] over given `/proc/self/mountinfo` and `/proc/self/cgroup` texts;
    /// `v2_controllers` reads a cgroup2 dir's `cgroup.controllers`.
    fn from_proc(
        mountinfo: &str,
        self_cgroup: &str,
        v2_controllers: impl Fn(&Path) -> Option<String>,
    ) -> Result<CgroupLayout, String> {
        let mounts = parse_mountinfo(mountinfo);
        let memberships = parse_self_cgroup(self_cgroup);
        let v1 = |controller: &str| {
            let path = &memberships
                .iter()
                .find(|m| m.controllers.iter().any(|c| c == controller))?
                .path;
            mounts
                .iter()
                .filter(|m| {
                    m.version == CgroupVersion::V1 && m.controllers.iter().any(|c| c == controller)
                })
                .find_map(|m| dir_in_mount(m, path))
                .map(|own_dir| Hierarchy {
                    version: CgroupVersion::V1,
                    own_dir,
                })
        };
        // The v2 line is the one with no controllers (`0::/path`), unlike v1's `name=systemd`.
        let v2_dir = memberships
            .iter()
            .find(|m| m.controllers.is_empty())
            .and_then(|m| {
                mounts
                    .iter()
                    .filter(|mount| mount.version == CgroupVersion::V2)
                    .find_map(|mount| dir_in_mount(mount, &m.path))
            });
        let v2_offered = v2_dir
            .as_deref()
            .and_then(&v2_controllers)
            .unwrap_or_default();
        let v2 = |controller: &str| {
            let dir = v2_dir.as_ref()?;
            v2_offered
                .split_whitespace()
                .any(|c| c == controller)
                .then(|| Hierarchy {
                    version: CgroupVersion::V2,
                    own_dir: dir.clone(),
                })
        };
        let layout = CgroupLayout {
            memory: v1("memory").or_else(|| v2("memory")),
            pids: v1("pids").or_else(|| v2("pids")),
        };
        if layout.memory.is_some() || layout.pids.is_some() {
            return Ok(layout);
        }
        let v2_part = match &v2_dir {
            Some(dir) => format!(
                "the cgroup2 hierarchy offers neither at {} (its controllers: {:?})",
                dir.display(),
                v2_offered.trim()
            ),
            None => "no cgroup2 hierarchy is mounted".to_string(),
        };
        Err(format!(
            "no cgroup v1 hierarchy with the memory or pids controller is mounted, and {v2_part}"
        ))
    }

    /// [`CgroupSupport`] for this layout.
    pub fn support(&self) -> CgroupSupport {
        let versions: Vec<CgroupVersion> = [&self.memory, &self.pids]
            .into_iter()
            .flatten()
            .map(|h| h.version)
            .collect();
        if versions.is_empty() {
            CgroupSupport::Unavailable(
                "neither the memory nor the pids controller is available".into(),
            )
        } else if versions.contains(&CgroupVersion::V1) {
            CgroupSupport::V1
        } else {
            CgroupSupport::V2
        }
    }
}

/// One cgroup kiln made, in one hierarchy.
#[derive(Debug)]
struct Group {
    dir: PathBuf,
    /// Its open `cgroup.procs`, which the child writes "0" to.
    procs: fs::File,
}

/// The cgroups holding one sandbox (one per hierarchy used), removed on drop.
#[derive(Debug)]
pub struct SandboxCgroup {
    groups: Vec<Group>,
    /// The group with the memory limit and its version, to read OOM kills from.
    memory_group: Option<(CgroupVersion, PathBuf)>,
    memory_limit: Option<u64>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io {
        action,
        path,
        source,
    }
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io_error("write", path))
}

/// Whether `dir`'s `cgroup.subtree_control` lists every one of `controllers`.
fn subtree_has(dir: &Path, controllers: &[&str]) -> bool {
    fs::read_to_string(dir.join("cgroup.subtree_control")).is_ok_and(|enabled| {
        controllers
            .iter()
            .all(|c| enabled.split_whitespace().any(|e| e == *c))
    })
}

/// The cgroup2 dir to make a group in that gets `controllers`: our own cgroup when it hands them
/// to children (already, or once we enable them: allowed when it holds no processes, or is the
/// root), else our parent, which already hands them to us.
///
/// # Errors
/// Enabling the controllers failed and the parent does not offer them either.
fn v2_parent(own_dir: &Path, controllers: &[&str]) -> Result<PathBuf, CgroupError> {
    if subtree_has(own_dir, controllers) {
        return Ok(own_dir.to_path_buf());
    }
    let request: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
    let control = own_dir.join("cgroup.subtree_control");
    match fs::write(&control, request.join(" ")) {
        Ok(()) => Ok(own_dir.to_path_buf()),
        Err(source) => match own_dir.parent() {
            Some(parent) if subtree_has(parent, controllers) => Ok(parent.to_path_buf()),
            _ => Err(CgroupError::Io {
                action: "enable controllers in",
                path: control,
                source,
            }),
        },
    }
}

/// The pid in a group name `kiln-<pid>-<n>`.
fn group_owner(name: &str) -> Option<u32> {
    let (pid, counter) = name.strip_prefix(GROUP_PREFIX)?.split_once('-')?;
    counter.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// Removes groups in `parent` left by kiln processes that are gone (best effort: a group still
/// holding processes cannot be removed and stays).
fn remove_stale_groups(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let me = std::process::id();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name.to_str().and_then(group_owner) else {
            continue;
        };
        if owner == me || Path::new("/proc").join(owner.to_string()).exists() {
            continue;
        }
        match fs::remove_dir(entry.path()) {
            Ok(()) => tracing::debug!(dir = %entry.path().display(), "removed a stale cgroup"),
            Err(error) => {
                tracing::debug!(dir = %entry.path().display(), %error, "stale cgroup not removed");
            }
        }
    }
}

/// The number after `key` in a flat-keyed cgroup file (`oom_kill 1`).
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok())?
    })
}

impl SandboxCgroup {
    /// The groups for `limits` where this host has controllers for them; `None` when no limit is
    /// set or none can be applied here (a warning says why).
    ///
    /// # Errors
    /// As [`SandboxCgroup::create`].
    pub fn for_limits(limits: &ResourceLimits) -> Result<Option<SandboxCgroup>, CgroupError> {
        if limits.is_empty() {
            return Ok(None);
        }
        SandboxCgroup::for_layout(CgroupLayout::detect(), limits)
    }

    /// [`SandboxCgroup::for_limits`] with the detection's result given.
    fn for_layout(
        layout: Result<CgroupLayout, String>,
        limits: &ResourceLimits,
    ) -> Result<Option<SandboxCgroup>, CgroupError> {
        match layout {
            Ok(layout) => SandboxCgroup::create(&layout, limits),
            Err(reason) => {
                tracing::warn!(%reason, "resource limits skipped");
                Ok(None)
            }
        }
    }

    /// Creates a group per hierarchy `limits` need and writes the limits. A limit whose controller
    /// `layout` lacks is skipped with a warning; `None` when nothing is left to apply.
    ///
    /// # Errors
    /// Creating a group, enabling cgroup2 controllers or writing a limit failed. Groups already
    /// made are removed again.
    pub fn create(
        layout: &CgroupLayout,
        limits: &ResourceLimits,
    ) -> Result<Option<SandboxCgroup>, CgroupError> {
        let memory = match (limits.memory_bytes, &layout.memory) {
            (Some(bytes), Some(hierarchy)) => Some((bytes, hierarchy)),
            (Some(_), None) => {
                tracing::warn!("memory limit skipped: no memory cgroup controller is available");
                None
            }
            (None, _) => None,
        };
        let pids = match (limits.pids_max, &layout.pids) {
            (Some(max), Some(hierarchy)) => Some((max, hierarchy)),
            (Some(_), None) => {
                tracing::warn!("pids limit skipped: no pids cgroup controller is available");
                None
            }
            (None, _) => None,
        };
        if memory.is_none() && pids.is_none() {
            return Ok(None);
        }
        let name = format!(
            "{GROUP_PREFIX}{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        // Filled as groups are made, so that an error below drops (and removes) what exists.
        let mut cgroup = SandboxCgroup {
            groups: Vec::new(),
            memory_group: None,
            memory_limit: memory.map(|(bytes, _)| bytes),
        };
        // One group per hierarchy: both controllers share one on cgroup2 (or a co-mounted v1).
        let shared = matches!((memory, pids), (Some((_, m)), Some((_, p))) if m == p);
        if let Some((bytes, hierarchy)) = memory {
            let mut controllers = vec!["memory"];
            if shared {
                controllers.push("pids");
            }
            let dir = cgroup.make_group(hierarchy, &controllers, &name)?;
            match hierarchy.version {
                CgroupVersion::V1 => {
                    write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    if memsw.exists() {
                        write(&memsw, &bytes.saturating_mul(2).to_string())?;
                    }
                }
                CgroupVersion::V2 => {
                    write(&dir.join("memory.max"), &bytes.to_string())?;
                    let swap = dir.join("memory.swap.max");
                    if swap.exists() {
                        write(&swap, &bytes.to_string())?;
                    }
                }
            }
            cgroup.memory_group = Some((hierarchy.version, dir.clone()));
            if let (true, Some((max, _))) = (shared, pids) {
                write(&dir.join("pids.max"), &max.to_string())?;
            }
        }
        if let (false, Some((max, hierarchy))) = (shared, pids) {
            let dir = cgroup.make_group(hierarchy, &["pids"], &name)?;
            write(&dir.join("pids.max"), &max.to_string())?;
        }
        Ok(Some(cgroup))
    }

    /// Makes group `name` for `controllers` in `hierarchy`, opens its `cgroup.procs`, records it,
    /// and returns its dir.
    fn make_group(
        &mut self,
        hierarchy: &Hierarchy,
        controllers: &[&str],
        name: &str,
    ) -> Result<PathBuf, CgroupError> {
        let parent = match hierarchy.version {
            CgroupVersion::V1 => hierarchy.own_dir.clone(),
            CgroupVersion::V2 => v2_parent(&hierarchy.own_dir, controllers)?,
        };
        remove_stale_groups(&parent);
        let dir = parent.join(name);
        fs::create_dir(&dir).map_err(io_error("create", &dir))?;
        let procs_path = dir.join("cgroup.procs");
        let procs = match fs::OpenOptions::new().write(true).open(&procs_path) {
            Ok(procs) => procs,
            Err(source) => {
                let _ = fs::remove_dir(&dir);
                return Err(CgroupError::Io {
                    action: "open",
                    path: procs_path,
                    source,
                });
            }
        };
        self.groups.push(Group {
            dir: dir.clone(),
            procs,
        });
        Ok(dir)
    }

    /// The open `cgroup.procs` files (one per hierarchy) the child writes "0" to, joining every
    /// group.
    pub fn procs_fds(&self) -> Vec<RawFd> {
        self.groups.iter().map(|g| g.procs.as_raw_fd()).collect()
    }

    /// The groups' directories.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.groups.iter().map(|g| g.dir.clone()).collect()
    }

    /// Whether the kernel's OOM killer ended a process in the memory group (v2 `memory.events`,
    /// v1 `memory.oom_control`; kernels before 4.13 lack its `oom_kill`, so there a hit of the
    /// limit, `memory.failcnt`, counts).
    pub fn oom_killed(&self) -> bool {
        let Some((version, dir)) = &self.memory_group else {
            return false;
        };
        let read = |file: &str| fs::read_to_string(dir.join(file)).unwrap_or_default();
        match version {
            CgroupVersion::V2 => keyed_value(&read("memory.events"), "oom_kill").unwrap_or(0) > 0,
            CgroupVersion::V1 => match keyed_value(&read("memory.oom_control"), "oom_kill") {
                Some(kills) => kills > 0,
                None => read("memory.failcnt").trim().parse::<u64>().unwrap_or(0) > 0,
            },
        }
    }

    /// `status` as Docker would report it: a failed command whose group saw an OOM kill becomes
    /// [`ExitStatus::OutOfMemory`]; anything else is returned as it is.
    pub fn exit_status(&self, status: ExitStatus) -> ExitStatus {
        match self.memory_limit {
            Some(limit_bytes) if !status.success() && self.oom_killed() => {
                ExitStatus::OutOfMemory {
                    code: status.code(),
                    limit_bytes,
                }
            }
            _ => status,
        }
    }
}

impl Drop for SandboxCgroup {
    fn drop(&mut self) {
        for group in std::mem::take(&mut self.groups).into_iter().rev() {
            let Group { dir, procs } = group;
            drop(procs);
            // The sandbox's processes are gone by now; the kernel may need a moment to notice.
            let mut removed = false;
            for _ in 0..50 {
                match fs::remove_dir(&dir) {
                    Ok(()) => {
                        removed = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        removed = true;
                        break;
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
            if !removed {
                tracing::warn!(dir = %dir.display(), "could not remove sandbox cgroup");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_SELF: &str = "\
9:name=systemd:/
8:pids:/
4:memory:/process_api/d97
1:cpu:/
0::/
";

    #[test]
    fn hybrid_host_uses_v1_below_the_own_cgroup() {
        let layout =
            CgroupLayout::from_proc(HYBRID_MOUNTINFO, HYBRID_SELF, |_| Some(String::new()))
                .unwrap();
        assert_eq!(
            layout.memory,
            Some(Hierarchy {
                version: CgroupVersion::V1,
                own_dir: "/sys/fs/cgroup/memory/process_api/d97".into()
            })
        );
        assert_eq!(
            layout.pids,
            Some(Hierarchy {
                version: CgroupVersion::V1,
                own_dir: "/sys/fs/cgroup/pids".into()
            })
        );
        assert_eq!(layout.support(), CgroupSupport::V1);
    }

    #[test]
    fn pure_v2_host_uses_the_unified_hierarchy_when_it_offers_the_controllers() {
        let mountinfo = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let own = "0::/user.slice/session-1.scope\n";
        let layout = CgroupLayout::from_proc(mountinfo, own, |dir| {
            assert_eq!(dir, Path::new("/sys/fs/cgroup/user.slice/session-1.scope"));
            Some("cpu memory pids\n".into())
        })
        .unwrap();
        let expected = Some(Hierarchy {
            version: CgroupVersion::V2,
            own_dir: "/sys/fs/cgroup/user.slice/session-1.scope".into(),
        });
        assert_eq!(layout.memory, expected);
        assert_eq!(layout.pids, expected);
        assert_eq!(layout.support(), CgroupSupport::V2);

        let memory_only =
            CgroupLayout::from_proc(mountinfo, own, |_| Some("memory".into())).unwrap();
        assert!(memory_only.memory.is_some() && memory_only.pids.is_none());
    }

    #[test]
    fn nested_container_mount_roots_are_stripped() {
        // A container whose cgroup v1 memory hierarchy is its own sub-tree bind-mounted.
        let mountinfo = "50 40 0:32 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n\
                         51 40 0:36 /docker/abc /sys/fs/cgroup/pids ro - cgroup cgroup rw,pids\n";
        let own = "8:pids:/docker/abc\n4:memory:/docker/abc/inner\n";
        let layout = CgroupLayout::from_proc(mountinfo, own, |_| None).unwrap();
        assert_eq!(
            layout.memory.unwrap().own_dir,
            Path::new("/sys/fs/cgroup/memory/inner")
        );
        assert_eq!(
            layout.pids.unwrap().own_dir,
            Path::new("/sys/fs/cgroup/pids")
        );
        // A mount root that is not an ancestor of our cgroup does not show it.
        let elsewhere = "50 40 0:32 /docker/xyz /mnt ro - cgroup cgroup rw,memory\n";
        assert!(CgroupLayout::from_proc(elsewhere, own, |_| None).is_err());
    }

    #[test]
    fn no_controllers_anywhere_says_why() {
        // Every v1 controller gone and an empty cgroup2 (a hybrid host's `unified` mount).
        let mountinfo = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        let reason =
            CgroupLayout::from_proc(mountinfo, "0::/\n", |_| Some(String::new())).unwrap_err();
        assert!(reason.contains("no cgroup v1 hierarchy"), "{reason}");
        assert!(reason.contains("/sys/fs/cgroup/unified"), "{reason}");
        let none = CgroupLayout::from_proc("", "", |_| None).unwrap_err();
        assert!(none.contains("no cgroup2 hierarchy is mounted"), "{none}");
        assert!(matches!(
            CgroupLayout::default().support(),
            CgroupSupport::Unavailable(_)
        ));
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        let mounts = parse_mountinfo("1 2 0:1 / /a\\040b rw shared:1 - cgroup cg rw,pids,memory\n");
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].mount_point, Path::new("/a b"));
        assert_eq!(mounts[0].controllers, ["rw", "pids", "memory"]);
    }

    #[test]
    fn detection_matches_this_host() {
        let mountinfo = fs::read_to_string(MOUNTINFO).unwrap();
        let has_v1 = |controller: &str| {
            parse_mountinfo(&mountinfo).iter().any(|m| {
                m.version == CgroupVersion::V1 && m.controllers.iter().any(|c| c == controller)
            })
        };
        match detect() {
            CgroupSupport::V1 => assert!(has_v1("memory") || has_v1("pids")),
            CgroupSupport::V2 => assert!(!has_v1("memory") && !has_v1("pids")),
            CgroupSupport::Unavailable(reason) => {
                assert!(!has_v1("memory") && !has_v1("pids"), "{reason}");
            }
        }
    }

    #[test]
    fn sizes_parse_as_docker_does() {
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("64MB"), Ok(64 << 20));
        assert_eq!(parse_size("64mib"), Ok(64 << 20));
        assert_eq!(parse_size("64 m"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("2t"), Ok(2 << 40));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("100b"), Ok(100));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in [
            "", "m", "-1", "64x", "64mm", "1.g", "1..5m", ".5m", "64mbb", "sixty",
        ] {
            assert_eq!(
                parse_size(bad),
                Err(SizeError::Invalid(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(
            parse_size("99999999999p"),
            Err(SizeError::TooLarge("99999999999p".into()))
        );
    }

    #[test]
    fn memory_limits_follow_docker_minimum_and_zero() {
        assert_eq!(parse_memory_limit("64m"), Ok(Some(64 << 20)));
        assert_eq!(parse_memory_limit("0"), Ok(None));
        assert_eq!(parse_memory_limit("6m"), Ok(Some(6 << 20)));
        assert_eq!(
            parse_memory_limit("5m"),
            Err(SizeError::BelowMinimum("5m".into()))
        );
        assert!(
            SizeError::BelowMinimum("5m".into())
                .to_string()
                .contains("6 MiB")
        );
    }

    #[test]
    fn bytes_are_formatted_for_people() {
        assert_eq!(format_bytes(64 << 20), "64 MiB");
        assert_eq!(format_bytes(3 << 29), "1.5 GiB");
        assert_eq!(format_bytes(1000), "1000 bytes");
        assert_eq!(format_bytes(2048), "2 KiB");
    }

    #[test]
    fn group_names_carry_their_owner() {
        assert_eq!(group_owner("kiln-123-4"), Some(123));
        assert_eq!(group_owner("kiln-x-4"), None);
        assert_eq!(group_owner("kiln-123"), None);
        assert_eq!(group_owner("docker"), None);
    }

    #[test]
    fn stale_groups_of_dead_owners_are_removed_and_others_kept() {
        let parent = tempfile::tempdir().unwrap();
        // Beyond pid_max (2^22), so never a live process.
        let dead = parent.path().join("kiln-999999999-0");
        let mine = parent.path().join(format!("kiln-{}-0", std::process::id()));
        let foreign = parent.path().join("docker");
        for dir in [&dead, &mine, &foreign] {
            fs::create_dir(dir).unwrap();
        }
        remove_stale_groups(parent.path());
        assert!(!dead.exists());
        assert!(mine.exists() && foreign.exists());
    }

    #[test]
    fn v2_groups_go_below_our_cgroup_or_beside_it() {
        // Plain dirs stand in for cgroupfs: the parent hands out memory and pids.
        let root = tempfile::tempdir().unwrap();
        let own = root.path().join("session.scope");
        fs::create_dir(&own).unwrap();
        fs::write(root.path().join("cgroup.subtree_control"), "memory pids\n").unwrap();
        // Already delegated below us.
        fs::write(own.join("cgroup.subtree_control"), "memory pids\n").unwrap();
        assert_eq!(v2_parent(&own, &["memory", "pids"]).unwrap(), own);
        // Enabling works (a plain file accepts the write).
        fs::write(own.join("cgroup.subtree_control"), "").unwrap();
        assert_eq!(v2_parent(&own, &["memory"]).unwrap(), own);
        // Enabling fails (here: no such file, as EBUSY would): beside us, below the parent.
        let busy = root.path().join("busy.scope");
        fs::create_dir(&busy).unwrap();
        fs::create_dir(busy.join("cgroup.subtree_control")).unwrap();
        assert_eq!(v2_parent(&busy, &["memory", "pids"]).unwrap(), root.path());
        assert!(v2_parent(&busy, &["cpu"]).is_err());
    }

    #[test]
    fn without_controllers_limits_are_skipped_not_failed() {
        let limits = ResourceLimits {
            memory_bytes: Some(64 << 20),
            pids_max: Some(64),
        };
        let unavailable = Err("no cgroup v1 hierarchy ...".to_string());
        assert!(
            SandboxCgroup::for_layout(unavailable, &limits)
                .unwrap()
                .is_none()
        );
        assert!(
            SandboxCgroup::create(&CgroupLayout::default(), &limits)
                .unwrap()
                .is_none()
        );
        // No limits asked: nothing is detected or made at all.
        assert!(
            SandboxCgroup::for_limits(&ResourceLimits::default())
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn oom_counters_are_read_per_version() {
        let dir = tempfile::tempdir().unwrap();
        let cgroup = |version| SandboxCgroup {
            groups: Vec::new(),
            memory_group: Some((version, dir.path().to_path_buf())),
            memory_limit: Some(64 << 20),
        };
        fs::write(
            dir.path().join("memory.events"),
            "low 0\nmax 3\noom 1\noom_kill 0\n",
        )
        .unwrap();
        assert!(!cgroup(CgroupVersion::V2).oom_killed());
        fs::write(
            dir.path().join("memory.events"),
            "max 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert!(cgroup(CgroupVersion::V2).oom_killed());
        assert_eq!(
            cgroup(CgroupVersion::V2).exit_status(ExitStatus::Signaled(9)),
            ExitStatus::OutOfMemory {
                code: 137,
                limit_bytes: 64 << 20
            }
        );
        assert_eq!(
            cgroup(CgroupVersion::V2)
                .exit_status(ExitStatus::Exited(137))
                .to_string(),
            "killed: out of memory (limit 64 MiB)"
        );
        assert_eq!(
            cgroup(CgroupVersion::V2).exit_status(ExitStatus::Exited(0)),
            ExitStatus::Exited(0)
        );
        fs::write(
            dir.path().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
        )
        .unwrap();
        fs::write(dir.path().join("memory.failcnt"), "5\n").unwrap();
        assert!(!cgroup(CgroupVersion::V1).oom_killed());
        // An old kernel without `oom_kill`: a hit of the limit counts.
        fs::write(
            dir.path().join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\n",
        )
        .unwrap();
        assert!(cgroup(CgroupVersion::V1).oom_killed());
    }
}

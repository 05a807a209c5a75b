//! Optional resource limits with cgroup v2. Applied only where `/sys/fs/cgroup` *is* a cgroup2 mount
//! with the `memory`/`pids` controllers available; on cgroup v1 or hybrid hosts (like the CI machine)
//! [`detect`] says why not and the sandbox runs without limits, logging a warning.
//!
//! The parent creates `/sys/fs/cgroup/kiln/<unique>`, writes the limits and opens its `cgroup.procs`;
//! the child joins by writing "0" to that fd before exec (a plain write, safe after `clone`).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::statfs::CGROUP2_SUPER_MAGIC;
use thiserror::Error;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Errors creating or configuring a sandbox cgroup.
#[derive(Debug, Error)]
#[error("cgroup: {action} {path}: {source}")]
pub struct CgroupError {
    action: &'static str,
    path: PathBuf,
    source: io::Error,
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

/// Whether limits can be applied here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupSupport {
    V2,
    /// Why not (v1/hybrid host, missing controllers...).
    Unavailable(String),
}

/// Checks that `/sys/fs/cgroup` is a cgroup2 filesystem offering the memory and pids controllers.
pub fn detect() -> CgroupSupport {
    match nix::sys::statfs::statfs(CGROUP_ROOT) {
        Ok(stat) if stat.filesystem_type() == CGROUP2_SUPER_MAGIC => {}
        Ok(_) => {
            return CgroupSupport::Unavailable(format!(
                "{CGROUP_ROOT} is not a cgroup2 mount (cgroup v1 or hybrid)"
            ));
        }
        Err(e) => return CgroupSupport::Unavailable(format!("statfs {CGROUP_ROOT}: {e}")),
    }
    let controllers =
        fs::read_to_string(Path::new(CGROUP_ROOT).join("cgroup.controllers")).unwrap_or_default();
    let has = |name: &str| controllers.split_whitespace().any(|c| c == name);
    if has("memory") && has("pids") {
        CgroupSupport::V2
    } else {
        CgroupSupport::Unavailable(format!(
            "cgroup2 controllers are {controllers:?}, need memory and pids"
        ))
    }
}

/// A cgroup holding one sandbox, removed on drop.
#[derive(Debug)]
pub struct SandboxCgroup {
    dir: PathBuf,
    procs: fs::File,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn write(path: &Path, value: &str, action: &'static str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError {
        action,
        path: path.to_path_buf(),
        source,
    })
}

impl SandboxCgroup {
    /// Creates the cgroup with `limits` (only call after [`detect`] returned `V2`).
    ///
    /// # Errors
    /// Creating the directory, enabling controllers or writing a limit failed.
    pub fn create(limits: &ResourceLimits) -> Result<SandboxCgroup, CgroupError> {
        let root = Path::new(CGROUP_ROOT);
        let parent = root.join("kiln");
        fs::create_dir_all(&parent).map_err(|source| CgroupError {
            action: "create",
            path: parent.clone(),
            source,
        })?;
        for dir in [root, parent.as_path()] {
            write(
                &dir.join("cgroup.subtree_control"),
                "+memory +pids",
                "enable controllers in",
            )?;
        }
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("sandbox-{}-{id}", std::process::id()));
        fs::create_dir(&dir).map_err(|source| CgroupError {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        let cgroup = |procs| SandboxCgroup {
            dir: dir.clone(),
            procs,
        };
        if let Some(bytes) = limits.memory_bytes {
            write(&dir.join("memory.max"), &bytes.to_string(), "write")?;
            // No swap either, so the limit means what it says.
            let _ = fs::write(dir.join("memory.swap.max"), "0");
        }
        if let Some(pids) = limits.pids_max {
            write(&dir.join("pids.max"), &pids.to_string(), "write")?;
        }
        let procs_path = dir.join("cgroup.procs");
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(&procs_path)
            .map_err(|source| CgroupError {
                action: "open",
                path: procs_path,
                source,
            })?;
        Ok(cgroup(procs))
    }

    /// The open `cgroup.procs` the child writes "0" to.
    pub fn procs_file(&self) -> &fs::File {
        &self.procs
    }
}

impl Drop for SandboxCgroup {
    fn drop(&mut self) {
        // The sandbox's processes are gone by now; the kernel may need a moment to notice.
        for _ in 0..50 {
            if fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        tracing::warn!(dir = %self.dir.display(), "could not remove sandbox cgroup");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_matches_the_mount() {
        let is_cgroup2 = nix::sys::statfs::statfs(CGROUP_ROOT)
            .is_ok_and(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC);
        match detect() {
            CgroupSupport::V2 => assert!(is_cgroup2),
            CgroupSupport::Unavailable(reason) => {
                assert!(!reason.is_empty());
                if !is_cgroup2 {
                    assert!(reason.contains("not a cgroup2"), "{reason}");
                }
            }
        }
    }
}

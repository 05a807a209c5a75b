//! Who owns what a file operation writes: `--chown` specs resolved against the DESTINATION image's
//! own `/etc/passwd` and `/etc/group` (read inside its root, so links in the image cannot point the
//! lookup at the host's files), with the rules of `kiln_image::user::resolve_chown` (BuildKit's:
//! a numeric user without a group uses its uid as gid, a name uses its primary gid).

use std::io::Read;
use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::fcntl::OFlag;

use crate::error::{FileOpError, Result, sys_err};
use crate::root::Root;

/// Largest passwd/group file read; real ones are a few KiB.
const MAX_ACCOUNT_FILE: u64 = 16 << 20;

/// The `--chown` of an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chown {
    /// Ids already known (e.g. resolved by the caller).
    Ids { uid: u32, gid: u32 },
    /// A `user[:group]` spec to resolve against the destination's account files.
    Spec(String),
}

impl Chown {
    /// Resolves to numeric ids, reading the destination's account files only when a name needs it.
    pub(crate) fn resolve(&self, op: &str, dest: &Root) -> Result<(u32, u32)> {
        let spec = match self {
            Chown::Ids { uid, gid } => return Ok((*uid, *gid)),
            Chown::Spec(spec) => spec,
        };
        let needs_files = spec
            .split(':')
            .any(|part| !part.is_empty() && !part.bytes().all(|b| b.is_ascii_digit()));
        let (passwd, group) = if needs_files {
            (
                read_account_file(op, dest, "etc/passwd")?,
                read_account_file(op, dest, "etc/group")?,
            )
        } else {
            (None, None)
        };
        resolve_chown_spec(op, spec, passwd.as_deref(), group.as_deref())
    }
}

/// Resolves a `--chown` spec against account file texts (`None` = file missing). This is the one
/// place that knows the lookup rules; it delegates to `kiln_image::user`.
pub(crate) fn resolve_chown_spec(
    op: &str,
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<(u32, u32)> {
    use kiln_image::user::{UserError, resolve_chown};
    match resolve_chown(spec, passwd, group) {
        Ok(owner) => Ok((owner.uid, owner.gid)),
        Err(UserError::UnknownUser(name)) => Err(FileOpError::UnknownUser {
            op: op.to_string(),
            reason: if passwd.is_some() {
                "no matching entry".into()
            } else {
                "the image has no /etc/passwd".into()
            },
            name,
        }),
        Err(UserError::UnknownGroup(name)) => Err(FileOpError::UnknownGroup {
            op: op.to_string(),
            reason: if group.is_some() {
                "no matching entry".into()
            } else {
                "the image has no /etc/group".into()
            },
            name,
        }),
        Err(UserError::IdOutOfRange { .. }) => Err(FileOpError::InvalidChown {
            spec: spec.to_string(),
            reason: "ids must be in range 0-2147483647",
        }),
        Err(UserError::InvalidSpec(_)) => Err(FileOpError::InvalidChown {
            spec: spec.to_string(),
            reason: "expected user[:group]",
        }),
    }
}

/// Reads an account file inside `root`; `None` when the image has none.
fn read_account_file(op: &str, root: &Root, rel: &str) -> Result<Option<String>> {
    let fd: OwnedFd = match root.open_in(rel, OFlag::O_RDONLY) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => return Ok(None),
        Err(e) => return Err(sys_err(op, "open", rel, e)),
    };
    let mut text = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_ACCOUNT_FILE)
        .read_to_end(&mut text)
        .map_err(|e| crate::error::io_err(op, "read", rel, e))?;
    Ok(Some(String::from_utf8_lossy(&text).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_spec_needs_no_files() {
        assert_eq!(
            resolve_chown_spec("COPY", "1000", None, None).unwrap(),
            (1000, 1000)
        );
        assert_eq!(
            resolve_chown_spec("COPY", "1:2", None, None).unwrap(),
            (1, 2)
        );
    }

    #[test]
    fn unknown_name_without_passwd_says_so() {
        let err = resolve_chown_spec("COPY", "app", None, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("app") && err.contains("no /etc/passwd"),
            "{err}"
        );
    }
}

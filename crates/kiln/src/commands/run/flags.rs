//! Parsing of the `docker run` flags that describe extra `/etc/hosts` lines and mounts:
//! `--add-host` (also `kiln build`'s), `--tmpfs` and `--mount`, with Docker's syntax and defaults.
//!
//! - `--add-host NAME:IP` or `NAME=IP`; an IPv6 address may be bracketed. `host-gateway` names the
//!   host: kiln has no bridge network, and on the host network the container shares the host's
//!   addresses, so it maps to 127.0.0.1 (with `--network none` there is no host to reach, and it is
//!   rejected).
//! - `--tmpfs PATH[:OPTIONS]`: Docker mounts `noexec,nosuid,nodev` by default, with no size limit
//!   beyond the kernel's (half of RAM); options add or override flags and pass size, mode, uid,
//!   gid... to the kernel.
//! - `--mount type=bind|tmpfs,...`: volumes do not exist in kiln and are rejected, as is a mount
//!   without a type (Docker's default type is a volume).

use std::collections::HashSet;
use std::fs;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};

use kiln_executor::ExtraMount;
use thiserror::Error;

/// The address `host-gateway` stands for on the host network.
pub const HOST_GATEWAY_ADDRESS: &str = "127.0.0.1";

/// Docker's defaults for `--tmpfs` and `--mount type=tmpfs`.
const TMPFS_DEFAULT_FLAGS: libc::c_ulong = libc::MS_NOEXEC | libc::MS_NOSUID | libc::MS_NODEV;

/// A flag value that does not follow Docker's syntax; the message names the flag and the value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FlagError {
    #[error("invalid --add-host {value:?}: {reason}")]
    AddHost { value: String, reason: String },
    #[error("invalid --tmpfs {value:?}: {reason}")]
    Tmpfs { value: String, reason: String },
    #[error("invalid --mount {value:?}: {reason}")]
    Mount { value: String, reason: String },
}

/// Whether `host-gateway` can be given an address: only on the host network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostGateway {
    /// Maps to [`HOST_GATEWAY_ADDRESS`].
    Loopback,
    /// Rejected: the container has no network to reach the host through.
    Unreachable,
}

/// Parses one `--add-host` value into (name, address).
///
/// # Errors
/// No separator, an empty or blank name, an address that is not IPv4/IPv6, or `host-gateway`
/// where it is [`HostGateway::Unreachable`].
pub fn parse_add_host(value: &str, gateway: HostGateway) -> Result<(String, String), FlagError> {
    let invalid = |reason: &str| FlagError::AddHost {
        value: value.to_string(),
        reason: reason.to_string(),
    };
    // `=` first (Docker 25+), so that an IPv6 address after `name:` keeps its colons.
    let (name, address) = value
        .split_once('=')
        .or_else(|| value.split_once(':'))
        .ok_or_else(|| invalid("expected NAME:IP or NAME=IP"))?;
    if name.is_empty() || name.contains(char::is_whitespace) {
        return Err(invalid("the host name is empty or contains white space"));
    }
    let address = address
        .strip_prefix('[')
        .and_then(|a| a.strip_suffix(']'))
        .unwrap_or(address);
    if address == "host-gateway" {
        return match gateway {
            HostGateway::Loopback => Ok((name.to_string(), HOST_GATEWAY_ADDRESS.to_string())),
            HostGateway::Unreachable => Err(invalid(
                "host-gateway needs a network to reach the host: kiln has no bridge network and \
                 --network none has only lo",
            )),
        };
    }
    let ip: IpAddr = address
        .parse()
        .map_err(|_| invalid(&format!("{address:?} is not an IPv4 or IPv6 address")))?;
    Ok((name.to_string(), ip.to_string()))
}

/// A container path for a mount: absolute, not `/`, without `..`.
fn check_target(target: &str) -> Result<PathBuf, String> {
    if !target.starts_with('/') {
        return Err(format!("the container path {target:?} must be absolute"));
    }
    let path = Path::new(target);
    if path.components().any(|c| c == Component::ParentDir) {
        return Err("the container path must not contain ..".into());
    }
    if path.components().all(|c| c == Component::RootDir) {
        return Err("the container path cannot be /".into());
    }
    Ok(path.to_path_buf())
}

/// tmpfs mount flags and data built from Docker's option words over the defaults.
struct TmpfsOptions {
    flags: libc::c_ulong,
    data: Vec<String>,
}

impl TmpfsOptions {
    fn new() -> TmpfsOptions {
        TmpfsOptions {
            flags: TMPFS_DEFAULT_FLAGS,
            data: Vec::new(),
        }
    }

    /// Applies one option word (`ro`, `exec`, `size=64m`...); later words win, as with mount(8).
    fn apply(&mut self, option: &str) -> Result<(), String> {
        let (set, clear) = match option {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "noatime" => (libc::MS_NOATIME, 0),
            "atime" => (0, libc::MS_NOATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            _ => {
                let (key, value) = option
                    .split_once('=')
                    .ok_or_else(|| format!("unknown option {option:?}"))?;
                if !matches!(
                    key,
                    "size" | "mode" | "uid" | "gid" | "nr_inodes" | "nr_blocks" | "huge" | "mpol"
                ) {
                    return Err(format!("unknown option {key:?}"));
                }
                if value.is_empty() {
                    return Err(format!("option {key} has no value"));
                }
                // One value per key: a later one replaces an earlier one.
                self.data.retain(|d| !d.starts_with(&format!("{key}=")));
                self.data.push(option.to_string());
                return Ok(());
            }
        };
        self.flags = (self.flags | set) & !clear;
        Ok(())
    }

    fn into_mount(self, target: PathBuf) -> ExtraMount {
        ExtraMount::TmpfsWithOptions {
            target,
            flags: self.flags,
            data: self.data.join(","),
        }
    }
}

/// Parses one `--tmpfs PATH[:OPTIONS]`.
///
/// # Errors
/// A relative path, `/`, a path with `..`, or an option mount(8) does not know for tmpfs.
pub fn parse_tmpfs(value: &str) -> Result<ExtraMount, FlagError> {
    let invalid = |reason: String| FlagError::Tmpfs {
        value: value.to_string(),
        reason,
    };
    let (target, options) = value.split_once(':').unwrap_or((value, ""));
    let target = check_target(target).map_err(invalid)?;
    let mut tmpfs = TmpfsOptions::new();
    for option in options.split(',').filter(|o| !o.is_empty()) {
        tmpfs.apply(option).map_err(invalid)?;
    }
    Ok(tmpfs.into_mount(target))
}

/// `true`/`1` or `false`/`0`, or true when the key stands alone (`readonly`).
fn parse_bool(value: Option<&str>) -> Result<bool, String> {
    match value {
        None | Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(other) => Err(format!("{other:?} is not true or false")),
    }
}

/// Parses one `--mount type=bind|tmpfs,...` (Docker's keys: `source`/`src`,
/// `target`/`destination`/`dst`, `readonly`/`ro`, `bind-propagation` (rprivate only),
/// `tmpfs-size` in bytes, `tmpfs-mode` in octal).
///
/// # Errors
/// A missing or unsupported type (volumes do not exist in kiln), a missing target, a bind source
/// that is not an existing absolute host path, or an unknown or repeated key.
pub fn parse_mount(value: &str) -> Result<ExtraMount, FlagError> {
    let invalid = |reason: String| FlagError::Mount {
        value: value.to_string(),
        reason,
    };
    let mut kind = None;
    let mut source = None;
    let mut target = None;
    let mut read_only = false;
    let mut tmpfs = TmpfsOptions::new();
    let mut seen = HashSet::new();
    for field in value.split(',').filter(|f| !f.is_empty()) {
        let (key, field_value) = match field.split_once('=') {
            Some((key, v)) => (key, Some(v)),
            None => (field, None),
        };
        let canonical = match key {
            "src" | "source" => "source",
            "dst" | "destination" | "target" => "target",
            "ro" | "readonly" => "readonly",
            other => other,
        };
        if !seen.insert(canonical) {
            return Err(invalid(format!("{key} given twice")));
        }
        let required = || field_value.ok_or_else(|| invalid(format!("{key} needs a value")));
        match canonical {
            "type" => kind = Some(required()?),
            "source" => source = Some(required()?),
            "target" => target = Some(required()?),
            "readonly" => read_only = parse_bool(field_value).map_err(invalid)?,
            "bind-propagation" => {
                if required()? != "rprivate" {
                    return Err(invalid(
                        "kiln's mounts are always rprivate (no propagation)".into(),
                    ));
                }
            }
            "tmpfs-size" => {
                let bytes: u64 = required()?
                    .parse()
                    .map_err(|_| invalid("tmpfs-size is a number of bytes".into()))?;
                tmpfs.apply(&format!("size={bytes}")).map_err(invalid)?;
            }
            "tmpfs-mode" => {
                let mode = required()?;
                u32::from_str_radix(mode, 8)
                    .map_err(|_| invalid(format!("tmpfs-mode {mode:?} is not octal")))?;
                tmpfs.apply(&format!("mode={mode}")).map_err(invalid)?;
            }
            other => return Err(invalid(format!("unknown key {other:?}"))),
        }
    }
    let target = check_target(target.ok_or_else(|| invalid("target is required".into()))?)
        .map_err(invalid)?;
    match kind {
        Some("bind") => {
            let source = source.ok_or_else(|| invalid("a bind mount needs a source".into()))?;
            if !source.starts_with('/') {
                return Err(invalid(format!("bind source {source:?} must be absolute")));
            }
            if fs::symlink_metadata(source).is_err() {
                return Err(invalid(format!(
                    "bind source path does not exist: {source}"
                )));
            }
            Ok(ExtraMount::Bind {
                source: PathBuf::from(source),
                target,
                read_only,
            })
        }
        Some("tmpfs") => {
            if source.is_some() {
                return Err(invalid("a tmpfs mount takes no source".into()));
            }
            if read_only {
                tmpfs.apply("ro").map_err(invalid)?;
            }
            Ok(tmpfs.into_mount(target))
        }
        Some("volume") | None => Err(invalid(
            "kiln has no volumes: use type=bind or type=tmpfs (Docker's default type is volume)"
                .into(),
        )),
        Some(other) => Err(invalid(format!(
            "unsupported type {other:?} (kiln supports bind and tmpfs)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpfs(target: &str, flags: libc::c_ulong, data: &str) -> ExtraMount {
        ExtraMount::TmpfsWithOptions {
            target: target.into(),
            flags,
            data: data.into(),
        }
    }

    #[test]
    fn add_host_follows_docker() {
        let parse = |v: &str| parse_add_host(v, HostGateway::Loopback);
        assert_eq!(parse("db:10.0.0.5"), Ok(("db".into(), "10.0.0.5".into())));
        assert_eq!(parse("db=10.0.0.5"), Ok(("db".into(), "10.0.0.5".into())));
        assert_eq!(parse("v6:::1"), Ok(("v6".into(), "::1".into())));
        assert_eq!(parse("v6=[fd00::1]"), Ok(("v6".into(), "fd00::1".into())));
        assert_eq!(
            parse("gw:host-gateway"),
            Ok(("gw".into(), "127.0.0.1".into()))
        );
        let error = parse_add_host("gw:host-gateway", HostGateway::Unreachable).unwrap_err();
        assert!(error.to_string().contains("host-gateway"), "{error}");
        for bad in [
            "db",
            ":1.2.3.4",
            "db:",
            "db:not-an-ip",
            "a b:1.2.3.4",
            "db:1.2.3.4.5",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn tmpfs_defaults_and_options_follow_docker() {
        let defaults = libc::MS_NOEXEC | libc::MS_NOSUID | libc::MS_NODEV;
        assert_eq!(parse_tmpfs("/run"), Ok(tmpfs("/run", defaults, "")));
        assert_eq!(
            parse_tmpfs("/run:rw,exec,size=64m,mode=1777"),
            Ok(tmpfs(
                "/run",
                libc::MS_NOSUID | libc::MS_NODEV,
                "size=64m,mode=1777"
            ))
        );
        assert_eq!(
            parse_tmpfs("/run:ro,size=1m,size=2m"),
            Ok(tmpfs("/run", defaults | libc::MS_RDONLY, "size=2m"))
        );
        for bad in [
            "run",
            "/",
            "/a/../b",
            "/run:bogus",
            "/run:color=red",
            "/run:size=",
        ] {
            assert!(parse_tmpfs(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn mount_flag_supports_bind_and_tmpfs_only() {
        let host = tempfile::tempdir().unwrap();
        let source = host.path().display().to_string();
        assert_eq!(
            parse_mount(&format!("type=bind,src={source},dst=/data,readonly")),
            Ok(ExtraMount::Bind {
                source: host.path().to_path_buf(),
                target: "/data".into(),
                read_only: true,
            })
        );
        assert_eq!(
            parse_mount(&format!("type=bind,source={source},target=/data,ro=false")),
            Ok(ExtraMount::Bind {
                source: host.path().to_path_buf(),
                target: "/data".into(),
                read_only: false,
            })
        );
        assert_eq!(
            parse_mount("type=tmpfs,destination=/cache,tmpfs-size=1048576,tmpfs-mode=700"),
            Ok(tmpfs(
                "/cache",
                libc::MS_NOEXEC | libc::MS_NOSUID | libc::MS_NODEV,
                "size=1048576,mode=700"
            ))
        );
        let volume = parse_mount("type=volume,src=v,dst=/v").unwrap_err();
        assert!(volume.to_string().contains("no volumes"), "{volume}");
        let untyped = parse_mount("src=v,dst=/v").unwrap_err();
        assert!(untyped.to_string().contains("no volumes"), "{untyped}");
        for bad in [
            "type=tmpfs".to_string(),
            "type=tmpfs,dst=/a,tmpfs-mode=9".into(),
            "type=tmpfs,dst=/a,tmpfs-size=1g".into(),
            "type=tmpfs,src=/x,dst=/a".into(),
            "type=bind,src=/nonexistent-kiln-path,dst=/a".into(),
            "type=bind,src=relative,dst=/a".into(),
            format!("type=bind,src={source},dst=/a,dst=/b"),
            format!("type=bind,src={source},dst=/a,bind-propagation=shared"),
            format!("type=bind,src={source},dst=/a,colour=blue"),
            "type=npipe,src=/x,dst=/a".into(),
        ] {
            assert!(parse_mount(&bad).is_err(), "{bad} should be rejected");
        }
    }
}

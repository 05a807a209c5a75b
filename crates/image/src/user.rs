//! Docker's user and group resolution, as pure functions over the *text* of an image's `/etc/passwd` and
//! `/etc/group` (no I/O: the caller reads the files from whatever root it has, or passes `None` when a file
//! is missing).
//!
//! Two entry points follow the two places Docker/BuildKit resolve users:
//! - [`resolve_exec_user`] for `USER` / `docker run -u` (moby's `GetExecUser`): numeric ids work without a
//!   passwd entry, names must exist, an explicit group replaces the primary gid and then no supplementary
//!   groups are added (they only make sense in the implicit form), HOME comes from the passwd entry, else
//!   `/root` for uid 0 and `/` for anyone else.
//! - [`resolve_chown`] for `COPY/ADD --chown` (BuildKit's `readUser`): a numeric user without a group uses
//!   its uid as gid, a named user without a group uses its primary gid, a group alone (`:staff`) resolves
//!   just the gid (uid 0).

use thiserror::Error;

/// The largest id Docker accepts (ids are signed 32-bit in its code paths).
pub const MAX_ID: u32 = i32::MAX as u32;

/// Why a user spec did not resolve. Messages name the user or group, as Docker's do.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum UserError {
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    #[error("invalid id {id} in user spec {spec:?}: uids and gids must be in range 0-{MAX_ID}")]
    IdOutOfRange { spec: String, id: String },
    #[error("invalid user spec {0:?}: more than one ':'")]
    InvalidSpec(String),
}

/// One line of `/etc/passwd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    pub shell: String,
}

/// One line of `/etc/group`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// The identity a process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    /// The passwd name when the user matched an entry.
    pub name: Option<String>,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups from `/etc/group` membership (implicit-group form only), in file order,
    /// without duplicates.
    pub additional_gids: Vec<u32>,
    pub home: String,
}

/// The owner a `--chown` gives to copied files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Parses `/etc/passwd` text. Malformed lines (wrong field count, non-numeric ids) and comments are
/// skipped, as libc and moby do.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 {
                return None;
            }
            Some(PasswdEntry {
                name: fields[0].to_string(),
                uid: fields[2].parse().ok()?,
                gid: fields[3].parse().ok()?,
                home: fields.get(5).copied().unwrap_or("").to_string(),
                shell: fields.get(6).copied().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// Parses `/etc/group` text; same leniency as [`parse_passwd`].
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 3 {
                return None;
            }
            let members = fields
                .get(3)
                .map(|m| {
                    m.split(',')
                        .map(str::trim)
                        .filter(|m| !m.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            Some(GroupEntry {
                name: fields[0].to_string(),
                gid: fields[2].parse().ok()?,
                members,
            })
        })
        .collect()
}

/// Splits `user[:group]`; an empty user part means root, as Docker's defaults do.
fn split_spec(spec: &str) -> Result<(&str, Option<&str>), UserError> {
    let mut parts = spec.splitn(3, ':');
    let user = parts.next().unwrap_or("");
    let group = parts.next();
    if parts.next().is_some() {
        return Err(UserError::InvalidSpec(spec.to_string()));
    }
    Ok((user, group))
}

/// `Some(id)` when `s` is all digits; an error when it is numeric but out of Docker's range.
fn numeric_id(spec: &str, s: &str) -> Result<Option<u32>, UserError> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match s.parse::<u64>() {
        Ok(id) if id <= u64::from(MAX_ID) => Ok(Some(id as u32)),
        _ => Err(UserError::IdOutOfRange {
            spec: spec.to_string(),
            id: s.to_string(),
        }),
    }
}

/// Finds a group by name, or by gid when `arg` is numeric; a numeric id without an entry is accepted.
fn lookup_group(spec: &str, arg: &str, groups: &[GroupEntry]) -> Result<u32, UserError> {
    let numeric = numeric_id(spec, arg)?;
    if let Some(entry) = groups
        .iter()
        .find(|g| g.name == arg || Some(g.gid) == numeric)
    {
        return Ok(entry.gid);
    }
    numeric.ok_or_else(|| UserError::UnknownGroup(arg.to_string()))
}

/// Resolves a `USER` spec (`name`, `uid`, `name:group`, `uid:gid`, `name:gid`, `uid:group`, or empty for
/// root) against the image's passwd and group files (`None` = file absent).
///
/// # Errors
/// [`UserError::UnknownUser`] / [`UserError::UnknownGroup`] when a *name* has no entry,
/// [`UserError::IdOutOfRange`] for ids above [`MAX_ID`], [`UserError::InvalidSpec`] for `a:b:c`.
pub fn resolve_exec_user(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ExecUser, UserError> {
    let (user_arg, group_arg) = split_spec(spec)?;
    let user_arg = if user_arg.is_empty() { "0" } else { user_arg };
    let users = passwd.map(parse_passwd).unwrap_or_default();
    let groups = group.map(parse_group).unwrap_or_default();

    let uid_arg = numeric_id(spec, user_arg)?;
    let mut resolved = match users
        .iter()
        .find(|u| u.name == user_arg || Some(u.uid) == uid_arg)
    {
        Some(entry) => ExecUser {
            name: Some(entry.name.clone()),
            uid: entry.uid,
            gid: entry.gid,
            additional_gids: Vec::new(),
            home: if entry.home.is_empty() {
                "/".to_string()
            } else {
                entry.home.clone()
            },
        },
        None => {
            let uid = uid_arg.ok_or_else(|| UserError::UnknownUser(user_arg.to_string()))?;
            let home = if uid == 0 { "/root" } else { "/" };
            ExecUser {
                name: None,
                uid,
                gid: 0,
                additional_gids: Vec::new(),
                home: home.to_string(),
            }
        }
    };

    match group_arg {
        Some(group_arg) if !group_arg.is_empty() => {
            resolved.gid = lookup_group(spec, group_arg, &groups)?;
        }
        _ => {
            if let Some(name) = &resolved.name {
                for entry in groups
                    .iter()
                    .filter(|g| g.members.iter().any(|m| m == name))
                {
                    if !resolved.additional_gids.contains(&entry.gid) {
                        resolved.additional_gids.push(entry.gid);
                    }
                }
            }
        }
    }
    Ok(resolved)
}

/// Resolves a `--chown` spec (`user`, `uid`, `user:group`, `uid:gid`, `:group`) to numeric ids.
///
/// # Errors
/// As [`resolve_exec_user`]: unknown names, out-of-range ids, too many `:`.
pub fn resolve_chown(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<Owner, UserError> {
    let (user_arg, group_arg) = split_spec(spec)?;
    let groups = group.map(parse_group).unwrap_or_default();
    let mut owner = if user_arg.is_empty() {
        Owner { uid: 0, gid: 0 }
    } else if let Some(uid) = numeric_id(spec, user_arg)? {
        // BuildKit: a numeric user is taken as is, and its gid defaults to the same number.
        Owner { uid, gid: uid }
    } else {
        let users = passwd.map(parse_passwd).unwrap_or_default();
        let entry = users
            .iter()
            .find(|u| u.name == user_arg)
            .ok_or_else(|| UserError::UnknownUser(user_arg.to_string()))?;
        Owner {
            uid: entry.uid,
            gid: entry.gid,
        }
    };
    if let Some(group_arg) = group_arg.filter(|g| !g.is_empty()) {
        owner.gid = lookup_group(spec, group_arg, &groups)?;
    }
    Ok(owner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # a comment\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n\
        broken line\n\
        nohome:x:1001:1001::\n";
    const GROUP: &str = "root:x:0:\n\
        daemon:x:1:\n\
        app:x:1000:\n\
        staff:x:50:app,daemon\n\
        audio:x:29:app\n\
        empty:x:2000:\n";

    fn exec(spec: &str) -> Result<ExecUser, UserError> {
        resolve_exec_user(spec, Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn empty_spec_is_root_with_root_home() {
        let u = exec("").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        assert_eq!(u.name.as_deref(), Some("root"));
    }

    #[test]
    fn name_gives_primary_gid_home_and_supplementary_groups() {
        let u = exec("app").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 1000));
        assert_eq!(u.home, "/home/app");
        assert_eq!(u.additional_gids, vec![50, 29]);
    }

    #[test]
    fn numeric_uid_with_entry_uses_entry() {
        let u = exec("1000").unwrap();
        assert_eq!(u.name.as_deref(), Some("app"));
        assert_eq!((u.gid, u.home.as_str()), (1000, "/home/app"));
        assert_eq!(u.additional_gids, vec![50, 29]);
    }

    #[test]
    fn numeric_uid_without_entry_defaults() {
        let u = exec("4242").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 0, "/"));
        assert!(u.additional_gids.is_empty());
        let u = resolve_exec_user("0", None, None).unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
    }

    #[test]
    fn explicit_group_replaces_gid_and_drops_supplementary() {
        let u = exec("app:staff").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 50));
        assert!(u.additional_gids.is_empty());
        let u = exec("1000:4000").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 4000));
        let u = exec("4242:29").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 29, "/"));
    }

    #[test]
    fn unknown_names_are_errors_naming_them() {
        assert_eq!(exec("nobody"), Err(UserError::UnknownUser("nobody".into())));
        assert_eq!(
            exec("app:nogroup"),
            Err(UserError::UnknownGroup("nogroup".into()))
        );
        let message = resolve_exec_user("app", None, None)
            .unwrap_err()
            .to_string();
        assert!(message.contains("unable to find user app"), "{message}");
    }

    #[test]
    fn out_of_range_and_malformed_specs() {
        assert!(matches!(
            exec("4294967296"),
            Err(UserError::IdOutOfRange { .. })
        ));
        assert!(matches!(
            exec("2147483648"),
            Err(UserError::IdOutOfRange { .. })
        ));
        assert!(exec("2147483647").is_ok());
        assert_eq!(exec("a:b:c"), Err(UserError::InvalidSpec("a:b:c".into())));
    }

    #[test]
    fn missing_home_defaults_to_slash() {
        assert_eq!(exec("nohome").unwrap().home, "/");
    }

    #[test]
    fn chown_rules() {
        let chown = |s: &str| resolve_chown(s, Some(PASSWD), Some(GROUP));
        assert_eq!(
            chown("app").unwrap(),
            Owner {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!(
            chown("1234").unwrap(),
            Owner {
                uid: 1234,
                gid: 1234
            }
        );
        assert_eq!(chown("app:staff").unwrap(), Owner { uid: 1000, gid: 50 });
        assert_eq!(chown("1000:29").unwrap(), Owner { uid: 1000, gid: 29 });
        assert_eq!(chown("5:audio").unwrap(), Owner { uid: 5, gid: 29 });
        assert_eq!(chown(":staff").unwrap(), Owner { uid: 0, gid: 50 });
        assert_eq!(chown("ghost"), Err(UserError::UnknownUser("ghost".into())));
        assert_eq!(
            chown("app:ghosts"),
            Err(UserError::UnknownGroup("ghosts".into()))
        );
        assert_eq!(
            resolve_chown("7:8", None, None).unwrap(),
            Owner { uid: 7, gid: 8 }
        );
    }

    #[test]
    fn parsers_skip_garbage() {
        assert_eq!(parse_passwd(PASSWD).len(), 4);
        let groups = parse_group(GROUP);
        assert_eq!(groups.len(), 6);
        assert_eq!(
            groups[3].members,
            vec!["app".to_string(), "daemon".to_string()]
        );
    }
}

//! The registry of running containers: what `kiln ps`, `exec`, `stop` and `kill` find.
//!
//! kiln has no daemon, so the registry is files under the store root, written by the `kiln run`
//! that owns the container and removed when it ends:
//!
//! ```text
//! <root>/containers/<id>/state.json   the container's state, replaced atomically (temp + rename)
//! <root>/containers/names/<name>      the id holding the name, created with O_EXCL
//! ```
//!
//! A name file created with `O_EXCL` makes names unique without a lock. Processes are identified
//! by pid *and* start time (`/proc/<pid>/stat` field 22), so a reused pid is never mistaken for a
//! container's. An entry whose owning `kiln run` is gone (kill -9) is stale: listing drops it, and a
//! new container may take its name.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use thiserror::Error;

/// Errors of the container registry.
#[derive(Debug, Error)]
pub enum ContainerError {
    /// Docker's message for a name another running container holds.
    #[error(
        "Conflict. The container name \"/{name}\" is already in use by container \"{id}\". You have to remove (or rename) that container to be able to reuse that name."
    )]
    NameInUse { name: String, id: String },
    #[error("No such container: {0}")]
    NotFound(String),
    #[error("multiple containers match {0:?}: give more of the id or the full name")]
    Ambiguous(String),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("container state {path} is invalid: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

type Result<T> = std::result::Result<T, ContainerError>;

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> ContainerError + 'a {
    move |source| ContainerError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A process named by its pid and its start time (clock ticks after boot), which together never
/// name two processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcessId {
    /// The process `pid` as it is now.
    ///
    /// # Errors
    /// `io::ErrorKind::NotFound` when there is no such process; other errors when its `stat`
    /// cannot be read or parsed.
    pub fn of(pid: i32) -> io::Result<ProcessId> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let start_time = parse_start_time(&stat).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected /proc/{pid}/stat"),
            )
        })?;
        Ok(ProcessId { pid, start_time })
    }

    /// This process.
    ///
    /// # Errors
    /// As [`ProcessId::of`].
    pub fn current() -> io::Result<ProcessId> {
        ProcessId::of(std::process::id() as i32)
    }

    /// Whether this very process still exists (a zombie counts as gone).
    pub fn is_alive(&self) -> bool {
        match fs::read_to_string(format!("/proc/{}/stat", self.pid)) {
            Ok(stat) => {
                parse_start_time(&stat) == Some(self.start_time)
                    && process_state(&stat) != Some('Z')
            }
            Err(_) => false,
        }
    }
}

/// The fields after the command name: it is in parentheses and may itself contain ") ".
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().collect())
}

/// Field 22 of `/proc/<pid>/stat` (the 20th after the command name).
fn parse_start_time(stat: &str) -> Option<u64> {
    stat_fields(stat)?.get(19)?.parse().ok()
}

/// Field 3 of `/proc/<pid>/stat`.
fn process_state(stat: &str) -> Option<char> {
    stat_fields(stat)?.first()?.chars().next()
}

/// What the registry keeps about a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// 64 hex digits.
    pub id: String,
    pub name: String,
    /// The image as the user named it.
    pub image: String,
    /// The process's arguments (entrypoint + command).
    pub command: Vec<String>,
    /// Seconds since the epoch.
    pub created: u64,
    /// The `kiln run` that owns the container; the entry is stale once it is gone.
    pub owner: ProcessId,
    /// The container's PID 1 as seen from the host, once started.
    pub process: Option<ProcessId>,
    /// The container's environment (for `kiln exec`).
    pub env: Vec<String>,
    /// The user the container runs as (`USER[:GROUP]`).
    pub user: String,
    /// The container's working directory.
    pub workdir: String,
    /// The capability bits the container keeps, and whether it is privileged.
    pub capabilities: u64,
    pub privileged: bool,
    /// Whether the default seccomp filter applies.
    pub seccomp: bool,
    /// The image's STOPSIGNAL, if any.
    pub stop_signal: Option<String>,
}

impl ContainerState {
    /// Whether the container runs: its owner is alive and its PID 1 has started and still exists.
    pub fn is_running(&self) -> bool {
        self.owner.is_alive() && self.process.is_some_and(|p| p.is_alive())
    }

    fn to_json(&self) -> Value {
        let process = |p: &ProcessId| json!({ "pid": p.pid, "start_time": p.start_time });
        json!({
            "id": self.id,
            "name": self.name,
            "image": self.image,
            "command": self.command,
            "created": self.created,
            "owner": process(&self.owner),
            "process": self.process.as_ref().map(process),
            "env": self.env,
            "user": self.user,
            "workdir": self.workdir,
            "capabilities": self.capabilities,
            "privileged": self.privileged,
            "seccomp": self.seccomp,
            "stop_signal": self.stop_signal,
        })
    }

    fn from_json(value: &Value) -> std::result::Result<ContainerState, String> {
        let string = |key: &str| {
            value[key]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("{key} is not a string"))
        };
        let strings = |key: &str| -> std::result::Result<Vec<String>, String> {
            value[key]
                .as_array()
                .ok_or_else(|| format!("{key} is not a list"))?
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<_>>()
                .ok_or_else(|| format!("{key} holds a non-string"))
        };
        let process = |v: &Value| -> std::result::Result<ProcessId, String> {
            Ok(ProcessId {
                pid: v["pid"]
                    .as_i64()
                    .and_then(|p| i32::try_from(p).ok())
                    .ok_or("pid is not a number")?,
                start_time: v["start_time"]
                    .as_u64()
                    .ok_or("start_time is not a number")?,
            })
        };
        Ok(ContainerState {
            id: string("id")?,
            name: string("name")?,
            image: string("image")?,
            command: strings("command")?,
            created: value["created"].as_u64().ok_or("created is not a number")?,
            owner: process(&value["owner"])?,
            process: match &value["process"] {
                Value::Null => None,
                v => Some(process(v)?),
            },
            env: strings("env")?,
            user: string("user")?,
            workdir: string("workdir")?,
            capabilities: value["capabilities"]
                .as_u64()
                .ok_or("capabilities is not a number")?,
            privileged: value["privileged"].as_bool().unwrap_or(false),
            seccomp: value["seccomp"].as_bool().unwrap_or(true),
            stop_signal: value["stop_signal"].as_str().map(str::to_string),
        })
    }
}

/// The registry under `<root>/containers/`.
#[derive(Debug, Clone)]
pub struct Containers {
    dir: PathBuf,
}

impl Containers {
    /// The registry in `dir` (created on first registration).
    pub fn new(dir: &Path) -> Containers {
        Containers {
            dir: dir.to_path_buf(),
        }
    }

    fn names_dir(&self) -> PathBuf {
        self.dir.join("names")
    }

    fn state_path(&self, id: &str) -> PathBuf {
        self.dir.join(id).join("state.json")
    }

    /// Registers a container: takes its name and writes its state. The registration is removed
    /// when the returned guard drops.
    ///
    /// # Errors
    /// [`ContainerError::NameInUse`] when a live container holds the name (a stale holder is
    /// cleared); [`ContainerError::Io`] when the files cannot be written.
    pub fn register(&self, state: &ContainerState) -> Result<Registration> {
        // The state goes first, so that a name file always points at a written state: a name
        // whose holder has no state is stale (its holder unregistered or crashed).
        let dir = self.dir.join(&state.id);
        fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
        // From here on, dropping the registration removes what was written.
        let registration = Registration {
            containers: self.clone(),
            id: state.id.clone(),
            name: state.name.clone(),
        };
        self.write_state(state)?;
        let names = self.names_dir();
        fs::create_dir_all(&names).map_err(io_err("create directory", &names))?;
        // The name file appears with its content at once: a hard link to a file written first
        // (link(2) fails with EEXIST, as O_EXCL would, when the name is taken).
        let claim = dir.join("name");
        fs::write(&claim, state.id.as_bytes()).map_err(io_err("write", &claim))?;
        let name_path = names.join(&state.name);
        let mut cleared_stale = false;
        loop {
            match fs::hard_link(&claim, &name_path) {
                Ok(()) => return Ok(registration),
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                    let holder = fs::read_to_string(&name_path).unwrap_or_default();
                    let holder = holder.trim();
                    let live = match self.load(holder) {
                        Ok(Some(held)) => held.owner.is_alive(),
                        Ok(None) => false,
                        // Unreadable: assume it is in use rather than steal the name.
                        Err(_) => true,
                    };
                    if live || cleared_stale {
                        return Err(ContainerError::NameInUse {
                            name: state.name.clone(),
                            id: holder.to_string(),
                        });
                    }
                    // The holder is gone: the name is free.
                    self.remove_entry(holder, &state.name);
                    cleared_stale = true;
                }
                Err(error) => return Err(io_err("link", &name_path)(error)),
            }
        }
    }

    fn write_state(&self, state: &ContainerState) -> Result<()> {
        let path = self.state_path(&state.id);
        let temp = path.with_extension("json.tmp");
        let text =
            serde_json::to_vec_pretty(&state.to_json()).map_err(|e| ContainerError::Corrupt {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let mut file = fs::File::create(&temp).map_err(io_err("create", &temp))?;
        file.write_all(&text).map_err(io_err("write", &temp))?;
        file.sync_all().map_err(io_err("fsync", &temp))?;
        fs::rename(&temp, &path).map_err(io_err("rename into place", &path))?;
        Ok(())
    }

    /// The state of container `id`, `None` when it has none.
    fn load(&self, id: &str) -> Result<Option<ContainerState>> {
        if id.is_empty() || id.contains('/') {
            return Ok(None);
        }
        let path = self.state_path(id);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_err("read", &path)(error)),
        };
        let value: Value = serde_json::from_slice(&text).map_err(|e| ContainerError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        ContainerState::from_json(&value)
            .map(Some)
            .map_err(|reason| ContainerError::Corrupt { path, reason })
    }

    fn remove_entry(&self, id: &str, name: &str) {
        if !id.is_empty() && !id.contains('/') {
            let _ = fs::remove_dir_all(self.dir.join(id));
        }
        let name_path = self.names_dir().join(name);
        // Only the holder's own name file: another container may have taken the name since.
        if fs::read_to_string(&name_path).is_ok_and(|holder| holder.trim() == id) {
            let _ = fs::remove_file(&name_path);
        }
    }

    /// Every registered container whose owner is alive, oldest first; entries of owners that died
    /// are removed on the way. With `all` false, only running ones (PID 1 started and alive).
    ///
    /// # Errors
    /// [`ContainerError::Io`] when the registry cannot be read.
    pub fn list(&self, all: bool) -> Result<Vec<ContainerState>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(io_err("read directory", &self.dir)(error)),
        };
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("read directory", &self.dir))?;
            let id = entry.file_name().to_string_lossy().into_owned();
            if id == "names" {
                continue;
            }
            match self.load(&id) {
                Ok(Some(state)) if state.owner.is_alive() => {
                    if all || state.is_running() {
                        found.push(state);
                    }
                }
                Ok(Some(state)) => self.remove_entry(&state.id, &state.name),
                // A registration in progress has its dir before its state: leave it alone.
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "skipping an unreadable container entry"),
            }
        }
        found.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
        Ok(found)
    }

    /// The live container named `key`, or whose id is or starts with `key` (Docker's lookup
    /// order: full id, name, id prefix).
    ///
    /// # Errors
    /// [`ContainerError::NotFound`], [`ContainerError::Ambiguous`] for an id prefix shared by
    /// several, [`ContainerError::Io`] when the registry cannot be read.
    pub fn find(&self, key: &str) -> Result<ContainerState> {
        let all = self.list(true)?;
        if let Some(state) = all.iter().find(|s| s.id == key || s.name == key) {
            return Ok(state.clone());
        }
        let mut matching = all
            .into_iter()
            .filter(|s| !key.is_empty() && s.id.starts_with(key));
        match (matching.next(), matching.next()) {
            (Some(state), None) => Ok(state),
            (Some(_), Some(_)) => Err(ContainerError::Ambiguous(key.to_string())),
            (None, _) => Err(ContainerError::NotFound(key.to_string())),
        }
    }

    /// Whether a live container holds `name`.
    ///
    /// # Errors
    /// [`ContainerError::Io`] when the registry cannot be read.
    pub fn name_in_use(&self, name: &str) -> Result<bool> {
        Ok(self.list(true)?.iter().any(|s| s.name == name))
    }
}

/// A registered container; dropping it removes the entry.
#[derive(Debug)]
pub struct Registration {
    containers: Containers,
    id: String,
    name: String,
}

impl Registration {
    /// Records the container's started PID 1 (the container shows as running from now on).
    ///
    /// # Errors
    /// [`ContainerError::Io`] when the state cannot be rewritten.
    pub fn set_process(&self, process: ProcessId) -> Result<()> {
        let mut state = self
            .containers
            .load(&self.id)?
            .ok_or_else(|| ContainerError::NotFound(self.id.clone()))?;
        state.process = Some(process);
        self.containers.write_state(&state)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.containers.remove_entry(&self.id, &self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: &str, name: &str, owner: ProcessId) -> ContainerState {
        ContainerState {
            id: id.repeat(64 / id.len()),
            name: name.into(),
            image: "busybox".into(),
            command: vec!["sleep".into(), "1000".into()],
            created: 1,
            owner,
            process: None,
            env: vec!["PATH=/bin".into()],
            user: String::new(),
            workdir: "/".into(),
            capabilities: 0xa80425fb,
            privileged: false,
            seccomp: true,
            stop_signal: Some("SIGQUIT".into()),
        }
    }

    /// A process that has exited: a child we reaped.
    fn dead_process() -> ProcessId {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let id = ProcessId::of(child.id() as i32).unwrap();
        child.wait().unwrap();
        id
    }

    #[test]
    fn start_time_is_field_22_even_with_parentheses_in_the_name() {
        let stat = "42 (a) b) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(process_state(stat), Some('S'));
        let me = ProcessId::current().unwrap();
        assert!(me.is_alive());
        let reused = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!reused.is_alive(), "same pid, other start time");
        assert!(!dead_process().is_alive());
    }

    #[test]
    fn state_round_trips_and_lists_once_started() {
        let tmp = tempfile::tempdir().unwrap();
        let containers = Containers::new(tmp.path());
        let me = ProcessId::current().unwrap();
        let original = state("a", "web", me);
        let registration = containers.register(&original).unwrap();
        assert_eq!(containers.list(false).unwrap(), []);
        assert_eq!(
            containers.list(true).unwrap(),
            std::slice::from_ref(&original)
        );
        registration.set_process(me).unwrap();
        let listed = containers.list(false).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].process, Some(me));
        assert_eq!(containers.find("web").unwrap().id, original.id);
        assert_eq!(containers.find("aaaa").unwrap().id, original.id);
        assert!(matches!(
            containers.find("nope"),
            Err(ContainerError::NotFound(_))
        ));
        drop(registration);
        assert_eq!(containers.list(true).unwrap(), []);
        assert!(!containers.name_in_use("web").unwrap());
    }

    #[test]
    fn names_are_unique_among_live_containers_and_stale_holders_give_way() {
        let tmp = tempfile::tempdir().unwrap();
        let containers = Containers::new(tmp.path());
        let me = ProcessId::current().unwrap();
        let _web = containers.register(&state("a", "web", me)).unwrap();
        let error = containers.register(&state("b", "web", me)).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("Conflict. The container name \"/web\" is already in use"),
            "{error}"
        );
        // A crashed kiln run left "db" behind: listing drops it and its name is free again.
        let stale = containers
            .register(&state("c", "db", dead_process()))
            .unwrap();
        std::mem::forget(stale);
        assert!(tmp.path().join("c".repeat(64)).exists());
        let _db = containers.register(&state("d", "db", me)).unwrap();
        let names: Vec<_> = containers
            .list(true)
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(names, ["a".repeat(64), "d".repeat(64)]);
        // A name file left by a holder that unregistered half-way (no state) does not block.
        fs::write(tmp.path().join("names/cache"), "e".repeat(64)).unwrap();
        let _cache = containers.register(&state("f", "cache", me)).unwrap();
        assert_eq!(containers.find("cache").unwrap().id, "f".repeat(64));
        assert!(!tmp.path().join("c".repeat(64)).exists());
    }

    #[test]
    fn ambiguous_id_prefixes_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let containers = Containers::new(tmp.path());
        let me = ProcessId::current().unwrap();
        let mut one = state("ab", "one", me);
        one.id = format!("ab{}", "1".repeat(62));
        let mut two = state("ab", "two", me);
        two.id = format!("ab{}", "2".repeat(62));
        let _one = containers.register(&one).unwrap();
        let _two = containers.register(&two).unwrap();
        assert!(matches!(
            containers.find("ab"),
            Err(ContainerError::Ambiguous(_))
        ));
        assert_eq!(containers.find("ab2").unwrap().name, "two");
    }
}

//! `kiln build --ssh`: turns the flag's values into the agent sockets the solver forwards to
//! `RUN --mount=type=ssh`, as `docker buildx build --ssh` reads them:
//!
//! - `default` (or any `ID` alone): the agent of `$SSH_AUTH_SOCK`;
//! - `ID=/path/to/agent.sock`: that agent;
//! - `ID=/path/to/key[,/path/to/key2…]`: private key files. BuildKit serves them from an agent
//!   inside its own process; kiln starts the system `ssh-agent -D` (OpenSSH) on a socket in a
//!   private temp dir, adds the keys with `ssh-add`, and stops it when the build ends
//!   ([`SshForwards`] owns it). A key with a passphrase is refused, as in BuildKit.
//!
//! A socket must be the only path of its id; an id given twice is an error (both as BuildKit).

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use kiln_solver::SshAgents;

/// Why an `--ssh` value cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SshFlagError {
    #[error("invalid --ssh {value:?}: the id is empty (expected ID[=SOCKET|KEY[,KEY…]])")]
    EmptyId { value: String },
    #[error("invalid --ssh: id {id:?} is given twice")]
    DuplicateId { id: String },
    #[error(
        "--ssh {id}: SSH_AUTH_SOCK is not set (start an ssh-agent, or pass --ssh {id}=/path/to/agent.sock or --ssh {id}=/path/to/key)"
    )]
    NoAgent { id: String },
    #[error("--ssh {id}: {}: {source}", path.display())]
    Path {
        id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--ssh {id}: the agent socket {} must be the only path of its id", path.display())]
    SocketWithOthers { id: String, path: PathBuf },
    #[error("--ssh {id}: {action}: {source}")]
    Agent {
        id: String,
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "--ssh {id}: the key {key} has a passphrase, which kiln cannot ask for (add it to your ssh-agent and pass --ssh {id})"
    )]
    KeyWithPassphrase { id: String, key: String },
    #[error("--ssh {id}: {action} failed: {stderr}")]
    AgentFailed {
        id: String,
        action: String,
        stderr: String,
    },
}

/// The agents of a build: sockets by id, and the `ssh-agent`s kiln started for key files (stopped
/// and their dirs removed on drop).
#[derive(Debug, Default)]
pub struct SshForwards {
    agents: SshAgents,
    started: Vec<StartedAgent>,
}

impl SshForwards {
    /// Reads every `--ssh` value; `auth_sock` is the caller's `$SSH_AUTH_SOCK`.
    ///
    /// # Errors
    /// [`SshFlagError`]: an empty or repeated id, no `SSH_AUTH_SOCK` where it is needed, a path that
    /// does not exist, a socket mixed with keys, or an `ssh-agent`/`ssh-add` that fails (a key it
    /// cannot read, one with a passphrase).
    pub fn start(
        values: &[String],
        auth_sock: Option<OsString>,
    ) -> Result<SshForwards, SshFlagError> {
        let mut forwards = SshForwards::default();
        for value in values {
            let (id, paths) = match value.split_once('=') {
                Some((id, paths)) => (id, paths.split(',').map(PathBuf::from).collect()),
                None => (value.as_str(), Vec::new()),
            };
            if id.is_empty() {
                return Err(SshFlagError::EmptyId {
                    value: value.clone(),
                });
            }
            if forwards.agents.contains_key(id) {
                return Err(SshFlagError::DuplicateId { id: id.to_string() });
            }
            let socket = if paths.is_empty() {
                match auth_sock.as_ref().filter(|sock| !sock.is_empty()) {
                    Some(sock) => PathBuf::from(sock),
                    None => return Err(SshFlagError::NoAgent { id: id.to_string() }),
                }
            } else {
                forwards.socket_for(id, &paths)?
            };
            forwards.agents.insert(id.to_string(), socket);
        }
        Ok(forwards)
    }

    /// The agent sockets by id, for [`kiln_solver::Solver::with_ssh_agents`].
    pub fn agents(&self) -> &SshAgents {
        &self.agents
    }

    /// The socket of `paths`: the one socket given, or a new agent holding the key files.
    fn socket_for(&mut self, id: &str, paths: &[PathBuf]) -> Result<PathBuf, SshFlagError> {
        for path in paths {
            let meta = std::fs::metadata(path).map_err(|source| SshFlagError::Path {
                id: id.to_string(),
                path: path.clone(),
                source,
            })?;
            if meta.file_type().is_socket() {
                if paths.len() > 1 {
                    return Err(SshFlagError::SocketWithOthers {
                        id: id.to_string(),
                        path: path.clone(),
                    });
                }
                return Ok(path.clone());
            }
        }
        let agent = StartedAgent::start(id, paths)?;
        let socket = agent.socket.clone();
        self.started.push(agent);
        Ok(socket)
    }
}

/// An `ssh-agent -D` kiln started, with its private dir.
#[derive(Debug)]
struct StartedAgent {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl StartedAgent {
    /// Starts an agent on a socket in a new private temp dir and adds `keys` to it.
    fn start(id: &str, keys: &[PathBuf]) -> Result<StartedAgent, SshFlagError> {
        let io_error = |action: String| {
            move |source: std::io::Error| SshFlagError::Agent {
                id: id.to_string(),
                action,
                source,
            }
        };
        let dir = private_temp_dir().map_err(io_error("creating a dir for ssh-agent".into()))?;
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-s")
            .arg("-a")
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(source) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(io_error(
                    "starting ssh-agent (install OpenSSH's client, Debian's openssh-client)".into(),
                )(source));
            }
        };
        // From here on, dropping `agent` stops the agent and removes the dir.
        let mut agent = StartedAgent { child, dir, socket };
        agent.wait_until_listening(id)?;
        let added = Command::new("ssh-add")
            .args(keys)
            .env("SSH_AUTH_SOCK", &agent.socket)
            .env("SSH_ASKPASS_REQUIRE", "never")
            .env_remove("DISPLAY")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(io_error("running ssh-add".into()))?;
        if !added.status.success() {
            let stderr = String::from_utf8_lossy(&added.stderr);
            // ssh-add reads a passphrase from stdin here (null), never from the terminal.
            if let Some(key) = stderr
                .lines()
                .find_map(|line| line.strip_prefix("Enter passphrase for "))
            {
                return Err(SshFlagError::KeyWithPassphrase {
                    id: id.to_string(),
                    key: key.trim().trim_end_matches(':').to_string(),
                });
            }
            let keys: Vec<String> = keys.iter().map(|k| k.display().to_string()).collect();
            return Err(SshFlagError::AgentFailed {
                id: id.to_string(),
                action: format!("adding the key(s) {} with ssh-add", keys.join(", ")),
                stderr: stderr.trim().to_string(),
            });
        }
        Ok(agent)
    }

    /// `ssh-agent -D -s` prints its environment lines once it listens; reading them to the
    /// `echo Agent pid` line is the readiness signal (no polling for the socket).
    fn wait_until_listening(&mut self, id: &str) -> Result<(), SshFlagError> {
        let Some(stdout) = self.child.stdout.take() else {
            return Ok(());
        };
        for line in BufReader::new(stdout).lines() {
            let line = line.map_err(|source| SshFlagError::Agent {
                id: id.to_string(),
                action: "reading ssh-agent's output".into(),
                source,
            })?;
            if line.starts_with("echo Agent pid") {
                return Ok(());
            }
        }
        // Its output ended before it said it listens: it failed.
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
        }
        Err(SshFlagError::AgentFailed {
            id: id.to_string(),
            action: "starting ssh-agent".into(),
            stderr: stderr.trim().to_string(),
        })
    }
}

impl Drop for StartedAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A new dir only the caller can enter, under the system temp dir (short, since a socket path
/// must fit in 108 bytes).
fn private_temp_dir() -> std::io::Result<PathBuf> {
    let base = std::env::temp_dir();
    let pid = std::process::id();
    for attempt in 0..1000 {
        let dir = base.join(format!("kiln-ssh-{pid}-{attempt}"));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(error),
        }
    }
    Err(std::io::Error::other(format!(
        "no free name for a dir in {}",
        base.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn values(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_id_alone_uses_ssh_auth_sock_and_says_so_when_unset() {
        let forwards =
            SshForwards::start(&values(&["default", "gh"]), Some("/run/agent.sock".into()))
                .unwrap();
        assert_eq!(forwards.agents()["default"], Path::new("/run/agent.sock"));
        assert_eq!(forwards.agents()["gh"], Path::new("/run/agent.sock"));
        let error = SshForwards::start(&values(&["default"]), None).unwrap_err();
        assert!(
            error.to_string().contains("SSH_AUTH_SOCK is not set"),
            "{error}"
        );
    }

    #[test]
    fn bad_values_are_refused_with_what_is_wrong() {
        let sock = Some(OsString::from("/s"));
        let error = SshForwards::start(&values(&["=/x"]), sock.clone()).unwrap_err();
        assert!(matches!(error, SshFlagError::EmptyId { .. }), "{error}");
        let error = SshForwards::start(&values(&["a", "a"]), sock.clone()).unwrap_err();
        assert!(matches!(error, SshFlagError::DuplicateId { .. }), "{error}");
        let error = SshForwards::start(&values(&["a=/nonexistent/kiln-key"]), sock).unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/kiln-key"),
            "{error}"
        );
    }

    #[test]
    fn a_socket_path_is_used_as_it_is_and_must_be_alone() {
        let dir = std::env::temp_dir().join(format!("kiln-ssh-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("a.sock");
        let _ = std::fs::remove_file(&socket);
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let key = dir.join("key");
        std::fs::write(&key, "not a key").unwrap();
        let value = format!("x={}", socket.display());
        let forwards = SshForwards::start(&[value], None).unwrap();
        assert_eq!(forwards.agents()["x"], socket);
        let value = format!("x={},{}", key.display(), socket.display());
        let error = SshForwards::start(&[value], None).unwrap_err();
        assert!(
            matches!(error, SshFlagError::SocketWithOthers { .. }),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The dirs of agents this process started and has not stopped.
    fn agent_dirs_left() -> Vec<PathBuf> {
        let prefix = format!("kiln-ssh-{}-", std::process::id());
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .map(|entry| entry.unwrap())
            .filter(|entry| entry.file_name().to_string_lossy().starts_with(&prefix))
            .map(|entry| entry.path())
            .collect()
    }

    #[test]
    fn a_file_that_is_not_a_key_is_refused_and_its_agent_stopped() {
        if Command::new("ssh-agent").arg("-h").output().is_err() {
            eprintln!("skipping: ssh-agent is not installed");
            return;
        }
        let dir = std::env::temp_dir().join(format!("kiln-ssh-nokey-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("key");
        std::fs::write(&key, "not a key").unwrap();
        let error = SshForwards::start(&[format!("k={}", key.display())], None).unwrap_err();
        assert!(
            matches!(&error, SshFlagError::AgentFailed { action, .. } if action.contains("ssh-add")),
            "{error}"
        );
        assert_eq!(agent_dirs_left(), Vec::<PathBuf>::new());

        let key = dir.join("with-passphrase");
        let made = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "secret", "-f"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(made.status.success());
        let error = SshForwards::start(&[format!("k={}", key.display())], None).unwrap_err();
        assert!(
            matches!(&error, SshFlagError::KeyWithPassphrase { key: named, .. } if named.ends_with("with-passphrase")),
            "{error}"
        );
        assert_eq!(agent_dirs_left(), Vec::<PathBuf>::new());

        // A good key: the agent runs while the forwards live, and is gone after.
        let key = dir.join("good");
        let made = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(made.status.success());
        let forwards = SshForwards::start(&[format!("k={}", key.display())], None).unwrap();
        let socket = forwards.agents()["k"].clone();
        assert!(std::os::unix::net::UnixStream::connect(&socket).is_ok());
        drop(forwards);
        assert!(!socket.exists());
        assert_eq!(agent_dirs_left(), Vec::<PathBuf>::new());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

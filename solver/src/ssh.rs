//! SSH agent forwarding for `RUN --mount=type=ssh`: an [`AgentProxy`] is a unix socket in a step's
//! scratch dir, with the mount's uid/gid/mode, that relays every connection byte for byte to the
//! agent socket `kiln build --ssh` named.
//!
//! Why a proxy and not a bind of the agent's own socket: a bind shows the host socket's inode, so
//! the step would see the host's owner and mode (an `ssh-agent` socket is its user's, 0600) and a
//! `USER app` step with `uid=1000` could not connect; changing the host socket's owner is not ours
//! to do. BuildKit also presents its own socket with the requested owner and mode. The proxy runs
//! on plain threads (one accept loop, two copy threads per connection) so it works whether or not
//! the caller is on a tokio runtime; it lives exactly as long as the step.

use std::io::{Read, Write};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// Why an agent proxy could not be started.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct AgentProxyError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// A listening socket that relays to an SSH agent; stops listening when dropped.
pub struct AgentProxy {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    /// A duplicate of the listening socket, to wake the accept loop with a shutdown.
    listener: UnixListener,
    accept_loop: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for AgentProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentProxy")
            .field("path", &self.path)
            .finish()
    }
}

impl AgentProxy {
    /// Listens at `path` (which must not exist; its parent must), owned by `uid:gid` with `mode`,
    /// and relays each connection to the agent at `agent`. The agent is connected to per
    /// connection, so an agent that is down shows as a closed connection in the step, as with
    /// BuildKit.
    ///
    /// # Errors
    /// [`AgentProxyError`] when the socket cannot be made, owned or given its mode.
    pub fn start(
        agent: &Path,
        path: &Path,
        uid: u32,
        gid: u32,
        mode: u32,
    ) -> Result<AgentProxy, AgentProxyError> {
        let error = |action: &'static str| {
            let path = path.to_path_buf();
            move |source: std::io::Error| AgentProxyError {
                action,
                path,
                source,
            }
        };
        let listener = bind_listener(path).map_err(error("listen on"))?;
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(error("chown"))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(error("chmod"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let waker = listener.try_clone().map_err(error("duplicate"))?;
        let agent = agent.to_path_buf();
        let stopping = Arc::clone(&stop);
        let accept_loop = std::thread::Builder::new()
            .name("ssh-agent-proxy".into())
            .spawn(move || accept_connections(&listener, &agent, &stopping))
            .map_err(error("start the relay for"))?;
        Ok(AgentProxy {
            path: path.to_path_buf(),
            stop,
            listener: waker,
            accept_loop: Some(accept_loop),
        })
    }

    /// Where the proxy listens.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AgentProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // On Linux, shutting down a listening socket wakes a blocked accept() with an error,
        // which ends the loop.
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        if let Some(handle) = self.accept_loop.take() {
            let _ = handle.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds a listener at `path`, also when the path is longer than a socket address holds (108
/// bytes; a store under a deep `--root` makes such scratch paths): then through the short
/// `/proc/self/fd/<dir fd>/<name>`, which names the same dir.
fn bind_listener(path: &Path) -> std::io::Result<UnixListener> {
    const SUN_PATH_MAX: usize = 107;
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return UnixListener::bind(path);
    };
    if path.as_os_str().len() <= SUN_PATH_MAX {
        return UnixListener::bind(path);
    }
    let dir = std::fs::File::open(parent)?;
    UnixListener::bind(Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name))
}

fn accept_connections(listener: &UnixListener, agent: &Path, stop: &AtomicBool) {
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match accepted {
            Ok((client, _)) => match UnixStream::connect(agent) {
                Ok(upstream) => relay(client, upstream),
                Err(error) => {
                    tracing::warn!(agent = %agent.display(), %error, "cannot reach the SSH agent");
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => {
                tracing::debug!(%error, "SSH agent proxy stopped accepting");
                return;
            }
        }
    }
}

/// Copies both ways until each side is done; a side's end of input is passed on as a write
/// shutdown, so the agent sees the step close and the step sees the agent close.
fn relay(client: UnixStream, upstream: UnixStream) {
    let pairs = [
        (client.try_clone(), upstream.try_clone()),
        (Ok(upstream), Ok(client)),
    ];
    for (from, to) in pairs {
        let (Ok(from), Ok(to)) = (from, to) else {
            tracing::warn!("cannot duplicate an SSH agent connection");
            return;
        };
        let spawned = std::thread::Builder::new()
            .name("ssh-agent-relay".into())
            .spawn(move || copy_until_closed(from, to));
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start an SSH agent relay");
        }
    }
}

fn copy_until_closed(mut from: UnixStream, mut to: UnixStream) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
    let _ = from.shutdown(std::net::Shutdown::Read);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};

    /// A fake agent that answers each request with its bytes reversed, once per connection.
    fn echo_agent(path: &Path) -> JoinHandle<()> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(2) {
                let mut stream = stream.unwrap();
                let mut request = [0u8; 5];
                stream.read_exact(&mut request).unwrap();
                request.reverse();
                stream.write_all(&request).unwrap();
            }
        })
    }

    #[test]
    fn relays_each_connection_to_the_agent_with_the_requested_owner_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent.sock");
        let served = echo_agent(&agent);
        let path = dir.path().join("proxy.sock");
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let proxy = AgentProxy::start(&agent, &path, uid, gid, 0o640).unwrap();
        let meta = std::fs::symlink_metadata(proxy.path()).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!((meta.uid(), meta.gid()), (uid, gid));
        for _ in 0..2 {
            let mut client = UnixStream::connect(&path).unwrap();
            client.write_all(&[0, 0, 0, 1, 11]).unwrap();
            let mut answer = Vec::new();
            client.read_to_end(&mut answer).unwrap();
            assert_eq!(answer, [11, 1, 0, 0, 0]);
        }
        served.join().unwrap();
        drop(proxy);
        assert!(!path.exists(), "the proxy removes its socket");
    }

    #[test]
    fn a_path_longer_than_a_socket_address_still_works() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent.sock");
        let served = echo_agent(&agent);
        let deep = dir.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let path = deep.join("0.sock");
        assert!(path.as_os_str().len() > 108);
        let proxy = AgentProxy::start(&agent, &path, 0, 0, 0o600).unwrap();
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_socket()
        );
        // Connect as the sandbox does: through a path of its own (a short symlink here).
        let short = dir.path().join("s");
        std::os::unix::fs::symlink(&path, &short).unwrap();
        let mut client = UnixStream::connect(&short).unwrap();
        client.write_all(&[1, 2, 3, 4, 5]).unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).unwrap();
        assert_eq!(answer, [5, 4, 3, 2, 1]);
        drop(proxy);
        drop(served);
    }

    #[test]
    fn an_existing_path_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("taken");
        std::fs::write(&path, "").unwrap();
        let error = AgentProxy::start(&dir.path().join("agent"), &path, 0, 0, 0o600).unwrap_err();
        assert!(error.to_string().contains("taken"), "{error}");
    }
}

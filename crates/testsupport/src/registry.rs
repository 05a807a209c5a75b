//! A CNCF distribution registry (Debian's `docker-registry`) on 127.0.0.1 with a temp config and
//! storage, for tests that push and pull for real.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::have;

/// A running registry, stopped (and its storage removed) when dropped.
pub struct TestRegistry {
    child: Child,
    pub port: u16,
    /// Config, storage and log.
    pub dir: tempfile::TempDir,
    /// The registry's log, access log included.
    pub log: PathBuf,
    /// Other directories the registry reads (the htpasswd file), removed with it.
    keep_alive: Vec<tempfile::TempDir>,
}

impl TestRegistry {
    /// Starts a registry; `auth_yaml` is an optional top-level `auth:` section. Returns `None`
    /// (and says why) when `docker-registry` is not installed.
    pub fn start(auth_yaml: &str) -> Option<TestRegistry> {
        if !have("docker-registry") {
            eprintln!(
                "SKIP: docker-registry is not installed (apt-get install -y docker-registry)"
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("registry dir");
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_yaml}",
                dir.path().join("data").display()
            ),
        )
        .expect("write registry config");
        let log = dir.path().join("registry.log");
        let log_file = std::fs::File::create(&log).expect("registry log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log_file.try_clone().expect("log handle"))
            .stderr(log_file)
            .spawn()
            .expect("start docker-registry");
        let registry = TestRegistry {
            child,
            port,
            dir,
            log,
            keep_alive: Vec::new(),
        };
        registry.wait_ready();
        Some(registry)
    }

    /// A registry that requires `user`/`password` (htpasswd, bcrypt).
    pub fn start_with_password(user: &str, password: &str) -> Option<TestRegistry> {
        let auth_dir = tempfile::tempdir().expect("auth dir");
        let htpasswd = auth_dir.path().join("htpasswd");
        let hash = bcrypt::hash_with_result(password, 4)
            .expect("bcrypt hash")
            .format_for_version(bcrypt::Version::TwoY);
        std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("write htpasswd");
        let mut registry = TestRegistry::start(&format!(
            "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
            htpasswd.display()
        ))?;
        registry.keep_alive.push(auth_dir);
        Some(registry)
    }

    /// Waits until the port accepts connections; the deadline only bounds a registry that never
    /// comes up (it is not a timing assertion).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "registry did not start; log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// `127.0.0.1:<port>`, as a registry host in references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Lines of the registry's log containing `needle` (e.g. `"PUT /v2/"`).
    pub fn log_count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Stops the registry now (a test of a registry that goes away); its storage stays until drop.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("local addr")
        .port()
}

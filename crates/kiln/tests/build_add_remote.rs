//! End-to-end `ADD <url>` and `ADD <git repository>` with the real `kiln` binary. Nothing leaves
//! 127.0.0.1: a tiny HTTP server on a std `TcpListener` thread serves files (with and without
//! `Last-Modified`), a redirect, a 404 and a 500-then-200; Git repositories are served by
//! `git daemon` from a temp dir. Results are checked in the root filesystem written by
//! `--output type=local`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Kiln, free_port, have, stderr};

/// `Last-Modified` of the files served with one, and its Unix time.
const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
const LAST_MODIFIED_UNIX: i64 = 1_445_412_480;

/// One canned response.
#[derive(Clone)]
struct Response {
    status: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn ok(body: &[u8]) -> Response {
        Response {
            status: "200 OK",
            headers: Vec::new(),
            body: body.to_vec(),
        }
    }

    fn header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// A route: the responses for its first requests in turn, the last one repeated after that.
/// A response with an `ETag` is answered `304 Not Modified` (no body) to a request whose
/// `If-None-Match` names that tag.
struct Route {
    responses: Vec<Response>,
    hits: AtomicUsize,
    not_modified: AtomicUsize,
}

/// An HTTP/1.1 server on 127.0.0.1 answering each connection once (`Connection: close`).
struct TestServer {
    port: u16,
    routes: Arc<Mutex<HashMap<String, Arc<Route>>>>,
}

impl TestServer {
    fn start() -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test server");
        let port = listener.local_addr().expect("local addr").port();
        let routes: Arc<Mutex<HashMap<String, Arc<Route>>>> = Arc::default();
        let served = Arc::clone(&routes);
        // The thread ends with the test process; the listener is never closed before that.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let routes = Arc::clone(&served);
                std::thread::spawn(move || answer(stream, &routes));
            }
        });
        TestServer { port, routes }
    }

    fn route(&self, path: &str, responses: Vec<Response>) {
        self.routes.lock().unwrap().insert(
            path.to_string(),
            Arc::new(Route {
                responses,
                hits: AtomicUsize::new(0),
                not_modified: AtomicUsize::new(0),
            }),
        );
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn hits(&self, path: &str) -> usize {
        self.routes.lock().unwrap()[path]
            .hits
            .load(Ordering::SeqCst)
    }

    /// How many requests to `path` were answered `304 Not Modified`.
    fn not_modified(&self, path: &str) -> usize {
        self.routes.lock().unwrap()[path]
            .not_modified
            .load(Ordering::SeqCst)
    }
}

fn answer(stream: TcpStream, routes: &Mutex<HashMap<String, Arc<Route>>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Read the headers (requests carry no body here); only `If-None-Match` matters.
    let mut if_none_match = None;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if line == "\r\n" || line == "\n" => break,
            Ok(_) => {
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("if-none-match")
                {
                    if_none_match = Some(value.trim().to_string());
                }
            }
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let route = routes.lock().unwrap().get(&path).cloned();
    let response = match route {
        Some(route) => {
            let hit = route.hits.fetch_add(1, Ordering::SeqCst);
            let response = route.responses[hit.min(route.responses.len() - 1)].clone();
            let etag = response
                .headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case("etag"))
                .map(|(_, value)| value.clone());
            if etag.is_some() && etag == if_none_match {
                route.not_modified.fetch_add(1, Ordering::SeqCst);
                Response {
                    status: "304 Not Modified",
                    headers: response.headers,
                    body: Vec::new(),
                }
            } else {
                response
            }
        }
        None => Response {
            status: "404 Not Found",
            headers: Vec::new(),
            body: b"not found\n".to_vec(),
        },
    };
    let mut head = format!(
        "HTTP/1.1 {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        response.body.len()
    );
    for (name, value) in &response.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = stream;
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&response.body);
    let _ = stream.flush();
}

/// Builds `dockerfile` (in a fresh context) from scratch and exports the root filesystem;
/// returns (kiln output, rootfs dir).
fn build(kiln: &Kiln, name: &str, dockerfile: &str) -> (std::process::Output, PathBuf) {
    let context = kiln.context(name, &[("Dockerfile", dockerfile)]);
    let out = kiln.work.path().join(format!("{name}-rootfs"));
    let output = kiln.run(&[
        "build",
        "--progress",
        "plain",
        "--output",
        &format!("type=local,dest={}", out.display()),
        context.to_str().unwrap(),
    ]);
    (output, out)
}

/// Builds `context` (again), exporting the root filesystem to `<work dir>/<dest>`; fails the
/// test if the build fails. Returns (the plain progress output, the rootfs dir).
fn build_context_to(kiln: &Kiln, context: &Path, dest: &str) -> (String, PathBuf) {
    let out = kiln.work.path().join(dest);
    let output = kiln.ok(&[
        "build",
        "--progress",
        "plain",
        "--output",
        &format!("type=local,dest={}", out.display()),
        context.to_str().unwrap(),
    ]);
    (stderr(&output), out)
}

fn build_ok(kiln: &Kiln, name: &str, dockerfile: &str) -> PathBuf {
    let (output, out) = build(kiln, name, dockerfile);
    assert!(
        output.status.success(),
        "kiln build failed:\n{}",
        stderr(&output)
    );
    out
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .mode()
        & 0o7777
}

fn sha256_hex(bytes: &[u8]) -> String {
    let output = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(bytes)?;
            child.wait_with_output()
        })
        .expect("run sha256sum");
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn add_url_downloads_with_mode_0600_and_last_modified_mtime() {
    let server = TestServer::start();
    server.route(
        "/files/dated.txt",
        vec![Response::ok(b"dated\n").header("Last-Modified", LAST_MODIFIED)],
    );
    server.route("/files/undated.txt", vec![Response::ok(b"undated\n")]);
    let kiln = Kiln::new();
    let out = build_ok(
        &kiln,
        "download",
        &format!(
            "FROM scratch\nADD {} /dl/\nADD {} /dl/renamed.txt\n",
            server.url("/files/dated.txt"),
            server.url("/files/undated.txt")
        ),
    );
    let dated = out.join("dl/dated.txt");
    assert_eq!(std::fs::read(&dated).unwrap(), b"dated\n");
    assert_eq!(mode(&dated), 0o600, "Docker gives downloads mode 0600");
    let meta = std::fs::metadata(&dated).unwrap();
    assert_eq!(meta.mtime(), LAST_MODIFIED_UNIX, "mtime from Last-Modified");
    assert_eq!((meta.uid(), meta.gid()), (0, 0));

    let undated = out.join("dl/renamed.txt");
    assert_eq!(std::fs::read(&undated).unwrap(), b"undated\n");
    assert_eq!(mode(&undated), 0o600);
    assert_eq!(
        std::fs::metadata(&undated).unwrap().mtime(),
        0,
        "without Last-Modified the mtime is the epoch, as in BuildKit"
    );
}

#[test]
fn add_url_with_chown_and_chmod_applies_them_to_the_download() {
    let server = TestServer::start();
    server.route(
        "/tool.sh",
        vec![Response::ok(b"#!/bin/sh\necho tool\n").header("Last-Modified", LAST_MODIFIED)],
    );
    let kiln = Kiln::new();
    let out = build_ok(
        &kiln,
        "chown",
        &format!(
            "FROM scratch\nADD --chown=1000:50 --chmod=755 {url} /usr/local/bin/tool\nADD --chown=7:8 {url} /plain\n",
            url = server.url("/tool.sh")
        ),
    );
    let tool = out.join("usr/local/bin/tool");
    let meta = std::fs::metadata(&tool).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 50));
    assert_eq!(mode(&tool), 0o755);
    assert_eq!(meta.mtime(), LAST_MODIFIED_UNIX);
    let plain = std::fs::metadata(out.join("plain")).unwrap();
    assert_eq!((plain.uid(), plain.gid()), (7, 8));
    assert_eq!(mode(&out.join("plain")), 0o600, "--chown alone keeps 0600");
}

#[test]
fn add_url_archive_is_not_extracted() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("inside.txt"), "inside").unwrap();
    let status = Command::new("tar")
        .arg("-czf")
        .arg(work.path().join("bundle.tar.gz"))
        .arg("-C")
        .arg(work.path())
        .arg("inside.txt")
        .status()
        .expect("run tar");
    assert!(status.success());
    let archive = std::fs::read(work.path().join("bundle.tar.gz")).unwrap();

    let server = TestServer::start();
    server.route("/bundle.tar.gz", vec![Response::ok(&archive)]);
    let kiln = Kiln::new();
    let out = build_ok(
        &kiln,
        "archive",
        &format!("FROM scratch\nADD {} /opt/\n", server.url("/bundle.tar.gz")),
    );
    assert_eq!(
        std::fs::read(out.join("opt/bundle.tar.gz")).unwrap(),
        archive,
        "the archive is copied as a file"
    );
    assert!(!out.join("opt/inside.txt").exists(), "and not unpacked");
}

#[test]
fn add_url_checksum_is_verified() {
    let server = TestServer::start();
    server.route("/checked.txt", vec![Response::ok(b"checked\n")]);
    let kiln = Kiln::new();
    let digest = sha256_hex(b"checked\n");
    let out = build_ok(
        &kiln,
        "checksum-ok",
        &format!(
            "FROM scratch\nADD --checksum=sha256:{digest} {} /checked.txt\n",
            server.url("/checked.txt")
        ),
    );
    assert_eq!(
        std::fs::read(out.join("checked.txt")).unwrap(),
        b"checked\n"
    );
}

#[test]
fn add_url_checksum_mismatch_fails_naming_both_digests() {
    let server = TestServer::start();
    server.route("/tampered.txt", vec![Response::ok(b"tampered\n")]);
    let kiln = Kiln::new();
    let wrong = "0".repeat(64);
    let actual = sha256_hex(b"tampered\n");
    let (output, out) = build(
        &kiln,
        "checksum-bad",
        &format!(
            "FROM scratch\nADD --checksum=sha256:{wrong} {} /t.txt\n",
            server.url("/tampered.txt")
        ),
    );
    let text = stderr(&output);
    assert!(!output.status.success(), "a wrong checksum must fail");
    assert!(text.contains(&format!("sha256:{wrong}")), "{text}");
    assert!(text.contains(&format!("sha256:{actual}")), "{text}");
    assert!(text.contains(&server.url("/tampered.txt")), "{text}");
    assert!(!out.join("t.txt").exists());
}

#[test]
fn add_url_404_names_the_url() {
    let server = TestServer::start();
    let kiln = Kiln::new();
    let url = server.url("/nowhere/missing.txt");
    let (output, _) = build(
        &kiln,
        "missing",
        &format!("FROM scratch\nADD {url} /m.txt\n"),
    );
    let text = stderr(&output);
    assert!(!output.status.success());
    assert!(text.contains(&url), "{text}");
    assert!(text.contains("404"), "{text}");
}

#[test]
fn add_url_retries_a_server_error() {
    let server = TestServer::start();
    let failure = Response {
        status: "500 Internal Server Error",
        headers: Vec::new(),
        body: b"try again\n".to_vec(),
    };
    server.route(
        "/flaky.txt",
        vec![failure.clone(), Response::ok(b"second time lucky\n")],
    );
    server.route("/broken.txt", vec![failure]);
    let kiln = Kiln::new();
    let out = build_ok(
        &kiln,
        "flaky",
        &format!("FROM scratch\nADD {} /f.txt\n", server.url("/flaky.txt")),
    );
    assert_eq!(
        std::fs::read(out.join("f.txt")).unwrap(),
        b"second time lucky\n"
    );
    assert_eq!(server.hits("/flaky.txt"), 2);

    // A server that keeps failing is given up on, with its status.
    let (output, _) = build(
        &kiln,
        "broken",
        &format!("FROM scratch\nADD {} /b.txt\n", server.url("/broken.txt")),
    );
    let text = stderr(&output);
    assert!(!output.status.success());
    assert!(text.contains("500"), "{text}");
    assert!(text.contains(&server.url("/broken.txt")), "{text}");
    assert!(server.hits("/broken.txt") > 1, "retried before giving up");
}

#[test]
fn add_url_follows_redirects() {
    let server = TestServer::start();
    server.route(
        "/target.txt",
        vec![Response::ok(b"redirected\n").header("Last-Modified", LAST_MODIFIED)],
    );
    let redirect = Response {
        status: "302 Found",
        headers: vec![("Location".to_string(), "/target.txt".to_string())],
        body: Vec::new(),
    };
    server.route("/moved", vec![redirect]);
    let kiln = Kiln::new();
    let out = build_ok(
        &kiln,
        "redirect",
        &format!("FROM scratch\nADD {} /got/\n", server.url("/moved")),
    );
    // The name comes from the URL in the Dockerfile, the content from where it led.
    assert_eq!(
        std::fs::read(out.join("got/moved")).unwrap(),
        b"redirected\n"
    );
    assert_eq!(
        std::fs::metadata(out.join("got/moved")).unwrap().mtime(),
        LAST_MODIFIED_UNIX
    );
    assert_eq!(server.hits("/target.txt"), 1);
}

#[test]
fn add_url_is_cached_by_content_and_rebuilt_when_the_content_changes() {
    let server = TestServer::start();
    server.route("/data.txt", vec![Response::ok(b"version 1\n")]);
    let kiln = Kiln::new();
    let dockerfile = format!("FROM scratch\nADD {} /data.txt\n", server.url("/data.txt"));
    let context = kiln.context("cached", &[("Dockerfile", &dockerfile)]);
    let build = |dest: &str| {
        let (progress, out) = build_context_to(&kiln, &context, dest);
        (progress, std::fs::read(out.join("data.txt")).unwrap())
    };
    let (first, content) = build("first");
    assert_eq!(content, b"version 1\n");
    assert!(!first.contains("CACHED"), "{first}");
    let (second, content) = build("second");
    assert_eq!(content, b"version 1\n");
    assert!(
        second.contains("CACHED"),
        "the same content hits the cache:\n{second}"
    );
    assert_eq!(server.hits("/data.txt"), 2, "the URL is fetched each build");

    server.route("/data.txt", vec![Response::ok(b"version 2\n")]);
    let (third, content) = build("third");
    assert_eq!(content, b"version 2\n", "new content at the URL is used");
    assert!(!third.contains("CACHED"), "{third}");
}

#[test]
fn add_url_with_checksum_hits_the_cache_without_a_request() {
    // BuildKit keys a pinned download by its checksum: a rebuild must not fetch anything, even
    // when the server has gone (here: the route now answers 500).
    let server = TestServer::start();
    server.route(
        "/pinned.txt",
        vec![Response::ok(b"pinned\n").header("Last-Modified", LAST_MODIFIED)],
    );
    let kiln = Kiln::new();
    let digest = sha256_hex(b"pinned\n");
    let dockerfile = format!(
        "FROM scratch\nADD --checksum=sha256:{digest} {} /pinned.txt\n",
        server.url("/pinned.txt")
    );
    let first = build_ok(&kiln, "pinned-1", &dockerfile);
    assert_eq!(
        std::fs::read(first.join("pinned.txt")).unwrap(),
        b"pinned\n"
    );
    assert_eq!(mode(&first.join("pinned.txt")), 0o600);
    assert_eq!(server.hits("/pinned.txt"), 1);
    // `--explain` knows the step hits without asking the server either.
    let context = kiln.work.path().join("pinned-1");
    let explained = kiln.ok(&["build", "--explain", context.to_str().unwrap()]);
    let table = String::from_utf8_lossy(&explained.stdout).into_owned();
    assert!(table.contains("0 to run"), "{table}");
    assert_eq!(server.hits("/pinned.txt"), 1);

    server.route(
        "/pinned.txt",
        vec![Response {
            status: "500 Internal Server Error",
            headers: Vec::new(),
            body: b"gone\n".to_vec(),
        }],
    );
    let (output, second) = build(&kiln, "pinned-2", &dockerfile);
    let text = stderr(&output);
    assert!(
        output.status.success(),
        "a cache hit needs no server:\n{text}"
    );
    assert!(text.contains("CACHED"), "{text}");
    assert_eq!(server.hits("/pinned.txt"), 0, "no request on a hit");
    assert_eq!(
        std::fs::read(second.join("pinned.txt")).unwrap(),
        b"pinned\n"
    );
    assert_eq!(
        std::fs::metadata(second.join("pinned.txt"))
            .unwrap()
            .mtime(),
        LAST_MODIFIED_UNIX,
        "the cached layer keeps the first download's mtime"
    );

    // Another checksum is another key: it downloads (and here fails, naming the URL).
    let other = sha256_hex(b"other\n");
    let (output, _) = build(
        &kiln,
        "pinned-3",
        &format!(
            "FROM scratch\nADD --checksum=sha256:{other} {} /pinned.txt\n",
            server.url("/pinned.txt")
        ),
    );
    assert!(!output.status.success());
    assert!(server.hits("/pinned.txt") > 0, "a new checksum fetches");
}

#[test]
fn add_url_with_an_etag_is_revalidated_not_downloaded_again() {
    // Without a checksum kiln must ask the server, but like BuildKit it asks `If-None-Match`
    // with the ETag of its earlier download and reuses those bytes on 304.
    let server = TestServer::start();
    server.route(
        "/tool.txt",
        vec![
            Response::ok(b"tool 1\n")
                .header("ETag", "\"t1\"")
                .header("Last-Modified", LAST_MODIFIED),
        ],
    );
    let kiln = Kiln::new();
    let dockerfile = format!("FROM scratch\nADD {} /tool.txt\n", server.url("/tool.txt"));
    let first = build_ok(&kiln, "etag-1", &dockerfile);
    assert_eq!(std::fs::read(first.join("tool.txt")).unwrap(), b"tool 1\n");
    let (output, second) = build(&kiln, "etag-2", &dockerfile);
    let text = stderr(&output);
    assert!(output.status.success(), "{text}");
    assert_eq!(server.hits("/tool.txt"), 2, "asked both times");
    assert_eq!(
        server.not_modified("/tool.txt"),
        1,
        "the second answer had no body"
    );
    assert!(text.contains("CACHED"), "{text}");
    assert_eq!(std::fs::read(second.join("tool.txt")).unwrap(), b"tool 1\n");
    assert_eq!(
        std::fs::metadata(second.join("tool.txt")).unwrap().mtime(),
        LAST_MODIFIED_UNIX
    );

    // New content under a new tag is downloaded and used.
    server.route(
        "/tool.txt",
        vec![Response::ok(b"tool 2\n").header("ETag", "\"t2\"")],
    );
    let third = build_ok(&kiln, "etag-3", &dockerfile);
    assert_eq!(std::fs::read(third.join("tool.txt")).unwrap(), b"tool 2\n");
    assert_eq!(server.not_modified("/tool.txt"), 0);
}

// ---------------------------------------------------------------------------------------------
// Git

/// `git daemon` serving the repositories under `dir` on 127.0.0.1, stopped when dropped.
struct GitDaemon {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl GitDaemon {
    fn start() -> GitDaemon {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("git")
            .arg("daemon")
            .arg("--reuseaddr")
            .arg("--export-all")
            .arg("--listen=127.0.0.1")
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", dir.path().display()))
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start git daemon");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "git daemon did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        GitDaemon { child, port, dir }
    }

    fn url(&self, name: &str) -> String {
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs git in `dir` with a fixed identity; returns stdout.
fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(["-c", "user.name=kiln", "-c", "user.email=kiln@example.com"])
        .args(["-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("run git");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A repository `name.git` (bare, under the daemon's dir) with:
/// commit 1 (`version` = "one", `docs/guide.md`), tagged `v1` (annotated);
/// commit 2 (`version` = "two") on `main`;
/// commit 3 (`version` = "feature") on branch `feature`.
/// Returns the id of commit 1.
fn make_repository(daemon: &GitDaemon, name: &str) -> String {
    let work = daemon.dir.path().join(format!("{name}-work"));
    std::fs::create_dir_all(work.join("docs")).unwrap();
    git(&work, &["init", "--quiet"]);
    std::fs::write(work.join("version"), "one\n").unwrap();
    std::fs::write(work.join("docs/guide.md"), "# guide\n").unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "--quiet", "-m", "one"]);
    let first = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["tag", "-a", "v1", "-m", "version one"]);
    std::fs::write(work.join("version"), "two\n").unwrap();
    git(&work, &["commit", "--quiet", "-am", "two"]);
    git(&work, &["checkout", "--quiet", "-b", "feature"]);
    std::fs::write(work.join("version"), "feature\n").unwrap();
    git(&work, &["commit", "--quiet", "-am", "feature"]);
    git(&work, &["checkout", "--quiet", "main"]);
    git(
        daemon.dir.path(),
        &[
            "clone",
            "--quiet",
            "--bare",
            work.to_str().unwrap(),
            &format!("{name}.git"),
        ],
    );
    first
}

fn git_present() -> bool {
    if !have("git") {
        eprintln!("skipping: git is not installed");
        return false;
    }
    true
}

#[test]
fn add_git_repository_by_branch_tag_and_commit() {
    if !git_present() {
        return;
    }
    let daemon = GitDaemon::start();
    let first = make_repository(&daemon, "app");
    let url = daemon.url("app.git");
    let kiln = Kiln::new();
    let out = build_ok(
        &kiln,
        "git-refs",
        &format!(
            "FROM scratch\n\
             ADD {url} /default/\n\
             ADD {url}#feature /branch/\n\
             ADD {url}#v1 /tag/\n\
             ADD {url}#{first} /commit/\n\
             ADD {url}#main:docs /docs/\n"
        ),
    );
    let read = |path: &str| std::fs::read_to_string(out.join(path)).unwrap();
    assert_eq!(read("default/version"), "two\n", "the default branch");
    assert_eq!(read("branch/version"), "feature\n");
    assert_eq!(read("tag/version"), "one\n");
    assert_eq!(read("commit/version"), "one\n");
    assert_eq!(read("docs/guide.md"), "# guide\n", "a sub-directory");
    assert!(!out.join("docs/version").exists());
    for dir in ["default", "branch", "tag", "commit", "docs"] {
        assert!(
            !out.join(dir).join(".git").exists(),
            "no .git in /{dir} without --keep-git-dir"
        );
    }
}

#[test]
fn add_git_keep_git_dir() {
    if !git_present() {
        return;
    }
    let daemon = GitDaemon::start();
    make_repository(&daemon, "kept");
    let url = daemon.url("kept.git");
    let kiln = Kiln::new();
    let out = build_ok(
        &kiln,
        "git-keep",
        &format!("FROM scratch\nADD --keep-git-dir=true {url}#v1 /src/\n"),
    );
    assert_eq!(
        std::fs::read_to_string(out.join("src/version")).unwrap(),
        "one\n"
    );
    assert!(out.join("src/.git").is_dir(), "the repository is kept");
    // The kept repository is usable: it knows the checked-out commit.
    let head = git(&out.join("src"), &["rev-parse", "HEAD^{commit}"]);
    let tagged = git(
        &daemon.dir.path().join("kept.git"),
        &["rev-parse", "v1^{commit}"],
    );
    assert_eq!(head, tagged);
}

#[test]
fn add_git_unknown_ref_names_the_url_and_ref() {
    if !git_present() {
        return;
    }
    let daemon = GitDaemon::start();
    make_repository(&daemon, "refs");
    let url = daemon.url("refs.git");
    let kiln = Kiln::new();
    let (output, _) = build(
        &kiln,
        "git-missing",
        &format!("FROM scratch\nADD {url}#no-such-branch /src/\n"),
    );
    let text = stderr(&output);
    assert!(!output.status.success());
    assert!(text.contains(&format!("{url}#no-such-branch")), "{text}");
}

#[test]
fn add_git_is_cached_by_commit_and_follows_a_moved_branch() {
    if !git_present() {
        return;
    }
    let daemon = GitDaemon::start();
    make_repository(&daemon, "moving");
    let url = daemon.url("moving.git");
    let kiln = Kiln::new();
    let context = kiln.context(
        "git-cache",
        &[(
            "Dockerfile",
            &format!("FROM scratch\nADD {url}#main /src/\n"),
        )],
    );
    let build = |dest: &str| {
        let (progress, out) = build_context_to(&kiln, &context, dest);
        (
            progress,
            std::fs::read_to_string(out.join("src/version")).unwrap(),
        )
    };
    assert_eq!(build("first").1, "two\n");
    let (second, version) = build("second");
    assert_eq!(version, "two\n");
    assert!(second.contains("CACHED"), "the same commit hits:\n{second}");

    // A new commit on main (pushed from the work clone) is picked up.
    let work = daemon.dir.path().join("moving-work");
    std::fs::write(work.join("version"), "three\n").unwrap();
    git(&work, &["commit", "--quiet", "-am", "three"]);
    let bare = daemon.dir.path().join("moving.git");
    git(&work, &["push", "--quiet", bare.to_str().unwrap(), "main"]);
    let (third, version) = build("third");
    assert_eq!(version, "three\n");
    assert!(!third.contains("CACHED"), "{third}");
}

#[test]
fn add_git_at_a_full_commit_id_hits_the_cache_without_fetching() {
    if !git_present() {
        return;
    }
    let daemon = GitDaemon::start();
    let first = make_repository(&daemon, "pinned");
    let url = daemon.url("pinned.git");
    let kiln = Kiln::new();
    let context = kiln.context(
        "git-pinned",
        &[(
            "Dockerfile",
            &format!("FROM scratch\nADD {url}#{first} /src/\n"),
        )],
    );
    let build = |dest: &str| {
        let (progress, out) = build_context_to(&kiln, &context, dest);
        (
            progress,
            std::fs::read_to_string(out.join("src/version")).unwrap(),
        )
    };
    let (built, version) = build("first");
    assert_eq!(version, "one\n");
    assert!(built.contains("checked out"), "{built}");
    // With the server gone, the commit id alone finds the cached step (BuildKit skips its
    // `ls-remote` for a full commit id too).
    drop(daemon);
    let (again, version) = build("second");
    assert_eq!(version, "one\n");
    assert!(again.contains("CACHED"), "{again}");
    assert!(!again.contains("checked out"), "nothing fetched:\n{again}");
}

/// Routes every file of `dir` under `prefix` on `server` (a static copy, as a dumb HTTP Git server
/// is), plus `info/refs?service=git-upload-pack` answered with the plain ref list, which tells
/// git that the server only speaks the dumb protocol.
fn serve_dir_statically(server: &TestServer, prefix: &str, dir: &Path) {
    fn walk(server: &TestServer, prefix: &str, root: &Path, dir: &Path) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(server, prefix, root, &path);
            } else {
                let relative = path.strip_prefix(root).unwrap().to_str().unwrap();
                let body = std::fs::read(&path).unwrap();
                server.route(&format!("{prefix}/{relative}"), vec![Response::ok(&body)]);
            }
        }
    }
    walk(server, prefix, dir, dir);
    let refs = std::fs::read(dir.join("info/refs")).unwrap();
    server.route(
        &format!("{prefix}/info/refs?service=git-upload-pack"),
        vec![Response::ok(&refs).header("Content-Type", "text/plain")],
    );
}

#[test]
fn add_git_over_dumb_http_falls_back_to_a_full_fetch() {
    if !git_present() {
        return;
    }
    let daemon = GitDaemon::start();
    make_repository(&daemon, "web");
    let bare = daemon.dir.path().join("web.git");
    git(&bare, &["update-server-info"]);
    let server = TestServer::start();
    serve_dir_statically(&server, "/web.git", &bare);
    let url = server.url("/web.git");
    let kiln = Kiln::new();
    let out = build_ok(
        &kiln,
        "git-dumb",
        &format!("FROM scratch\nADD {url}#v1 /tag/\nADD {url} /default/\n"),
    );
    let read = |path: &str| std::fs::read_to_string(out.join(path)).unwrap();
    assert_eq!(read("tag/version"), "one\n");
    assert_eq!(read("default/version"), "two\n");
    assert!(!out.join("tag/.git").exists());
}

#[test]
fn add_git_checks_out_submodules() {
    if !git_present() {
        return;
    }
    let daemon = GitDaemon::start();
    make_repository(&daemon, "library");
    let work = daemon.dir.path().join("outer-work");
    std::fs::create_dir_all(&work).unwrap();
    git(&work, &["init", "--quiet"]);
    std::fs::write(work.join("README"), "outer\n").unwrap();
    git(
        &work,
        &[
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "--quiet",
            &daemon.url("library.git"),
            "vendor/library",
        ],
    );
    git(&work, &["add", "."]);
    git(&work, &["commit", "--quiet", "-m", "outer"]);
    git(
        daemon.dir.path(),
        &[
            "clone",
            "--quiet",
            "--bare",
            work.to_str().unwrap(),
            "outer.git",
        ],
    );
    let url = daemon.url("outer.git");
    let kiln = Kiln::new();
    let out = build_ok(
        &kiln,
        "git-submodules",
        &format!("FROM scratch\nADD {url} /plain/\nADD --keep-git-dir=true {url} /kept/\n"),
    );
    for dir in ["plain", "kept"] {
        assert_eq!(
            std::fs::read_to_string(out.join(dir).join("vendor/library/version")).unwrap(),
            "two\n",
            "the submodule is checked out in /{dir}"
        );
    }
    assert!(!out.join("plain/.git").exists());
    assert!(
        !out.join("plain/vendor/library/.git").exists(),
        "no dangling gitlink without --keep-git-dir"
    );
    assert!(out.join("kept/.git").is_dir());
    assert!(out.join("kept/vendor/library/.git").exists());
}

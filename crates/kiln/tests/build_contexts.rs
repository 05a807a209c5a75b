//! End-to-end `kiln build --build-context NAME=VALUE` and URL contexts with the real `kiln`
//! binary: named directories (their own `.dockerignore`, cache keys over their content), named
//! images (`docker-image://`), and Git and HTTP(S) contexts, main and named. Nothing leaves
//! 127.0.0.1: Git repositories are served by `git daemon` from a temp dir and files by a tiny
//! HTTP server on a std `TcpListener` thread.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use common::{
    Kiln, arch_image, build_busybox_with_kiln, free_port, have_or_skip, read, stderr, stdout,
};

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// `kiln build -q --output type=local,dest=<work>/<dest> <args…>`; returns the root filesystem.
fn build_rootfs(kiln: &Kiln, dest: &str, args: &[&str]) -> PathBuf {
    let dest = kiln.work.path().join(dest);
    let output = format!("type=local,dest={}", dest.display());
    let mut all = vec!["build", "-q", "--output", output.as_str()];
    all.extend_from_slice(args);
    kiln.ok(&all);
    dest
}

/// The image config `kiln inspect` shows for `name`.
fn inspect(kiln: &Kiln, name: &str) -> serde_json::Value {
    let text = stdout(&kiln.ok(&["inspect", name]));
    let value: serde_json::Value = serde_json::from_str(&text).expect("inspect JSON");
    match value {
        serde_json::Value::Array(mut items) => items.remove(0),
        other => other,
    }
}

#[test]
fn a_named_directory_replaces_a_stage_with_its_own_dockerignore() {
    let kiln = Kiln::new();
    let context = kiln.context(
        "main",
        &[
            (
                "Dockerfile",
                "FROM scratch AS deps\nCOPY never.txt /never.txt\n\
                 FROM scratch\nCOPY --from=deps / /deps/\nCOPY main.txt /main.txt\n",
            ),
            // The main context's ignore file: it must not apply to the named context.
            (".dockerignore", "lib.txt\n"),
            ("main.txt", "main\n"),
        ],
    );
    let deps = kiln.context(
        "deps",
        &[
            ("lib.txt", "lib\n"),
            ("secret.txt", "secret\n"),
            ("sub/keep.txt", "keep\n"),
            (".dockerignore", "secret.txt\n"),
        ],
    );
    let deps_arg = format!("deps={}", path_str(&deps));
    let rootfs = build_rootfs(
        &kiln,
        "out",
        &["--build-context", &deps_arg, path_str(&context)],
    );
    assert_eq!(read(rootfs.join("deps/lib.txt")), "lib\n");
    assert_eq!(read(rootfs.join("deps/sub/keep.txt")), "keep\n");
    assert!(
        !rootfs.join("deps/secret.txt").exists(),
        "the named context's own .dockerignore applies"
    );
    assert!(!rootfs.join("never.txt").exists() && !rootfs.join("deps/never.txt").exists());
    assert_eq!(read(rootfs.join("main.txt")), "main\n");
}

#[test]
fn a_named_directory_stands_in_for_from_and_copy_from() {
    let kiln = Kiln::new();
    let context = kiln.context(
        "main",
        &[(
            "Dockerfile",
            "FROM base\nCOPY --from=tools /tool.sh /usr/bin/tool.sh\n",
        )],
    );
    let base = kiln.context("base", &[("etc/os-release", "ID=named\n")]);
    let tools = kiln.context("tools", &[("tool.sh", "#!/bin/sh\n")]);
    let base_arg = format!("base={}", path_str(&base));
    let tools_arg = format!("tools={}", path_str(&tools));
    let rootfs = build_rootfs(
        &kiln,
        "out",
        &[
            "--build-context",
            &base_arg,
            "--build-context",
            &tools_arg,
            path_str(&context),
        ],
    );
    assert_eq!(read(rootfs.join("etc/os-release")), "ID=named\n");
    assert_eq!(read(rootfs.join("usr/bin/tool.sh")), "#!/bin/sh\n");
}

#[test]
fn a_named_image_replaces_from_and_feeds_run_mounts() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context(
        "main",
        &[(
            "Dockerfile",
            "FROM alpine:latest\n\
             RUN --mount=from=data,target=/data cat /data/value.txt > /from-mount.txt\n\
             COPY --from=data /value.txt /copied.txt\n",
        )],
    );
    let data = kiln.context("data", &[("value.txt", "mounted\n")]);
    let data_arg = format!("data={}", path_str(&data));
    let rootfs = build_rootfs(
        &kiln,
        "out",
        &[
            "--build-context",
            "alpine=docker-image://busybox",
            "--build-context",
            &data_arg,
            path_str(&context),
        ],
    );
    assert!(
        rootfs.join("bin/busybox").exists(),
        "FROM alpine is busybox"
    );
    assert_eq!(read(rootfs.join("from-mount.txt")), "mounted\n");
    assert_eq!(read(rootfs.join("copied.txt")), "mounted\n");
}

/// Whether the step whose progress line (`#N [..] TEXT`) contains `step` was reported `#N CACHED`
/// in BuildKit-style plain progress.
fn step_cached(progress: &str, step: &str) -> bool {
    let Some(number) = progress
        .lines()
        .find(|line| line.contains(step))
        .and_then(|line| line.split_whitespace().next())
    else {
        panic!("no progress line for {step:?}:\n{progress}");
    };
    progress
        .lines()
        .any(|line| line == format!("{number} CACHED"))
}

#[test]
fn changing_a_file_of_a_named_directory_reruns_what_reads_it() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context(
        "main",
        &[(
            "Dockerfile",
            "FROM busybox\n\
             RUN --mount=from=data,target=/data cat /data/value.txt > /value.txt\n",
        )],
    );
    let data = kiln.context("data", &[("value.txt", "one\n"), ("other.txt", "x\n")]);
    let data_arg = format!("data={}", path_str(&data));
    let step = "RUN --mount=from=data";
    let build = || {
        let out = kiln.ok(&[
            "build",
            "--progress",
            "plain",
            "--build-context",
            &data_arg,
            path_str(&context),
        ]);
        stderr(&out)
    };
    assert!(
        !step_cached(&build(), step),
        "the first build runs the step"
    );
    assert!(
        step_cached(&build(), step),
        "an unchanged named context is cached"
    );
    std::fs::write(data.join("value.txt"), "two\n").unwrap();
    assert!(
        !step_cached(&build(), step),
        "the RUN reading the changed file runs again"
    );
    let rootfs = build_rootfs(
        &kiln,
        "changed",
        &["--build-context", &data_arg, path_str(&context)],
    );
    assert_eq!(read(rootfs.join("value.txt")), "two\n");
}

#[test]
fn a_copy_from_a_replaced_stage_is_keyed_by_the_paths_it_takes() {
    let kiln = Kiln::new();
    let context = kiln.context(
        "main",
        &[(
            "Dockerfile",
            "FROM scratch AS deps\nFROM scratch\nCOPY --from=deps /a.txt /a.txt\n",
        )],
    );
    let deps = kiln.context("deps", &[("a.txt", "a\n"), ("b.txt", "b\n")]);
    let deps_arg = format!("deps={}", path_str(&deps));
    let build = || {
        let out = kiln.ok(&[
            "build",
            "--progress",
            "plain",
            "--build-context",
            &deps_arg,
            path_str(&context),
        ]);
        stderr(&out)
    };
    let step = "COPY --from=deps /a.txt";
    assert!(!step_cached(&build(), step));
    std::fs::write(deps.join("b.txt"), "changed\n").unwrap();
    assert!(
        step_cached(&build(), step),
        "a file the COPY does not take changed"
    );
    std::fs::write(deps.join("a.txt"), "changed\n").unwrap();
    assert!(
        !step_cached(&build(), step),
        "the file the COPY takes changed"
    );
}

#[test]
fn bad_named_contexts_fail_with_the_name() {
    let kiln = Kiln::new();
    let context = kiln.context("main", &[("Dockerfile", "FROM scratch\n")]);
    let missing = kiln.run(&[
        "build",
        "--build-context",
        "deps=/nonexistent/kiln-deps",
        path_str(&context),
    ]);
    assert!(!missing.status.success());
    let message = stderr(&missing);
    assert!(
        message.contains("deps") && message.contains("/nonexistent/kiln-deps"),
        "{message}"
    );
    let no_equals = kiln.run(&["build", "--build-context", "deps", path_str(&context)]);
    assert!(!no_equals.status.success());
    assert!(
        stderr(&no_equals).contains("NAME=VALUE"),
        "{}",
        stderr(&no_equals)
    );
    let upper = kiln.run(&["build", "--build-context", "Deps=.", path_str(&context)]);
    assert!(!upper.status.success());
    assert!(stderr(&upper).contains("lowercase"), "{}", stderr(&upper));
}

// ---------------------------------------------------------------------------------------------
// Git contexts.

/// `git daemon` serving the repositories under a temp dir on a free port; killed when dropped.
struct GitDaemon {
    child: Child,
    port: u16,
    base: tempfile::TempDir,
}

impl GitDaemon {
    fn start() -> Option<GitDaemon> {
        if !have_or_skip("git") {
            return None;
        }
        let base = tempfile::tempdir().expect("git base dir");
        let port = free_port();
        let child = Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.path().display()))
            .arg(base.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start git daemon");
        let mut daemon = GitDaemon { child, port, base };
        // Ready once it accepts connections (git daemon prints nothing when it is); a daemon
        // that exits instead failed to start. No deadline: a slow machine just waits longer.
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(daemon);
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("git daemon exited ({status}) before listening on port {port}");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// A repository `name` with one commit of `files` on `main` and a second branch `other` with
    /// `other_files` added; returns its `git://` URL.
    fn repository(
        &self,
        name: &str,
        files: &[(&str, &str)],
        other_files: &[(&str, &str)],
    ) -> String {
        let dir = self.base.path().join(name);
        common::write_files(&dir, files);
        let git = |args: &[&str]| {
            common::output_ok(
                Command::new("git")
                    .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
                    .args(args)
                    .current_dir(&dir),
            );
        };
        git(&["init", "--quiet", "--initial-branch=main"]);
        git(&["add", "-A"]);
        git(&["commit", "--quiet", "-m", "one"]);
        git(&["checkout", "--quiet", "-b", "other"]);
        common::write_files(&dir, other_files);
        git(&["add", "-A"]);
        git(&["commit", "--quiet", "-m", "two"]);
        git(&["checkout", "--quiet", "main"]);
        format!("git://127.0.0.1:{}/{name}", self.port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_git_repository_is_the_context() {
    let Some(daemon) = GitDaemon::start() else {
        return;
    };
    let url = daemon.repository(
        "app",
        &[
            ("Dockerfile", "FROM scratch\nCOPY . /src/\n"),
            ("hello.txt", "main branch\n"),
            (".dockerignore", "hello.txt\n"),
        ],
        &[
            ("sub/Dockerfile", "FROM scratch\nCOPY . /sub/\n"),
            ("sub/only.txt", "other branch\n"),
            (
                "sub/build.Dockerfile",
                "FROM scratch\nCOPY only.txt /picked.txt\n",
            ),
        ],
    );
    let kiln = Kiln::new();
    let rootfs = build_rootfs(&kiln, "main", &[&url]);
    // As BuildKit: a Git context is not filtered by .dockerignore, and .git is not in it.
    assert_eq!(read(rootfs.join("src/hello.txt")), "main branch\n");
    assert!(!rootfs.join("src/.git").exists());
    assert!(!rootfs.join("src/sub").exists(), "the default branch");

    let rootfs = build_rootfs(&kiln, "other", &[&format!("{url}#other:sub")]);
    assert_eq!(read(rootfs.join("sub/only.txt")), "other branch\n");
    assert!(
        !rootfs.join("sub/hello.txt").exists(),
        "only the sub-directory"
    );

    // A relative -f is a path inside the repository's context directory.
    let rootfs = build_rootfs(
        &kiln,
        "picked",
        &["-f", "build.Dockerfile", &format!("{url}#other:sub")],
    );
    assert_eq!(read(rootfs.join("picked.txt")), "other branch\n");

    // The same commit again: the COPY from the fetched checkout is cached.
    let plain = || {
        let out = kiln.ok(&["build", "--progress", "plain", &format!("{url}#other:sub")]);
        stderr(&out)
    };
    plain();
    let progress = plain();
    assert!(step_cached(&progress, "COPY . /sub/"));
    // The fetch of the context and the build are one numbering, as in BuildKit: no `#1` twice.
    let mut started: Vec<&str> = progress
        .lines()
        .filter(|line| line.starts_with('#') && line.contains(" ["))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    let shown = started.len();
    started.sort_unstable();
    started.dedup();
    assert_eq!(started.len(), shown, "a step number repeats:\n{progress}");
    assert!(progress.contains("load remote build context"), "{progress}");

    let missing = kiln.run(&["build", &format!("{url}#no-such-branch")]);
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains(&url), "{}", stderr(&missing));
}

#[test]
fn a_git_repository_as_a_named_context() {
    let Some(daemon) = GitDaemon::start() else {
        return;
    };
    let url = daemon.repository(
        "lib",
        &[("lib/version", "1.0\n")],
        &[("lib/version", "2.0\n")],
    );
    let kiln = Kiln::new();
    let context = kiln.context(
        "main",
        &[(
            "Dockerfile",
            "FROM scratch\nCOPY --from=lib version /version\n",
        )],
    );
    let named = format!("lib={url}#other:lib");
    let rootfs = build_rootfs(
        &kiln,
        "out",
        &["--build-context", &named, path_str(&context)],
    );
    assert_eq!(read(rootfs.join("version")), "2.0\n");
}

// ---------------------------------------------------------------------------------------------
// HTTP contexts.

/// An HTTP/1.1 server on 127.0.0.1 serving fixed bodies by path (404 otherwise), one request per
/// connection.
struct FileServer {
    port: u16,
}

impl FileServer {
    fn start(files: HashMap<String, Vec<u8>>) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the test server");
        let port = listener.local_addr().expect("local addr").port();
        let files = Arc::new(files);
        // The thread ends with the test process.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let files = Arc::clone(&files);
                std::thread::spawn(move || serve(stream, &files));
            }
        });
        FileServer { port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

fn serve(mut stream: TcpStream, files: &HashMap<String, Vec<u8>>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => break,
            Ok(_) if header.trim().is_empty() => break,
            Ok(_) => {}
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, body): (&str, &[u8]) = match files.get(path) {
        Some(body) => ("200 OK", body),
        None => ("404 Not Found", b"not found\n"),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
}

/// `dir` as a tar made by GNU tar, compressed with `compress` (`-z`, `-J`, or none).
fn tar_of(dir: &Path, compress: Option<&str>) -> Vec<u8> {
    let mut command = Command::new("tar");
    command.arg("-c");
    if let Some(flag) = compress {
        command.arg(flag);
    }
    command.arg("-C").arg(dir).arg(".");
    let output = common::output_ok(&mut command);
    output.stdout
}

#[test]
fn an_http_tarball_or_dockerfile_is_the_context() {
    if !have_or_skip("tar") {
        return;
    }
    let kiln = Kiln::new();
    let source = kiln.context(
        "served",
        &[
            ("Dockerfile", "FROM scratch\nCOPY data/ /data/\n"),
            ("data/a.txt", "from a tarball\n"),
        ],
    );
    let files = HashMap::from([
        ("/context.tar".to_string(), tar_of(&source, None)),
        ("/context.tar.gz".to_string(), tar_of(&source, Some("-z"))),
        ("/context.tar.xz".to_string(), tar_of(&source, Some("-J"))),
        (
            "/Dockerfile".to_string(),
            b"FROM scratch\nLABEL from=url\n".to_vec(),
        ),
    ]);
    let server = FileServer::start(files);
    for (path, dest) in [
        ("/context.tar", "plain"),
        ("/context.tar.gz", "gzip"),
        ("/context.tar.xz", "xz"),
    ] {
        let rootfs = build_rootfs(&kiln, dest, &[&server.url(path)]);
        assert_eq!(
            read(rootfs.join("data/a.txt")),
            "from a tarball\n",
            "{path}"
        );
    }

    let plain = kiln.ok(&[
        "build",
        "--progress",
        "plain",
        &server.url("/context.tar.gz"),
    ]);
    assert!(
        step_cached(&stderr(&plain), "COPY data/ /data/"),
        "the same content from another URL is cached"
    );

    kiln.ok(&["build", "-q", "-t", "from-url", &server.url("/Dockerfile")]);
    let config = inspect(&kiln, "from-url");
    assert_eq!(config["Config"]["Labels"]["from"], "url", "{config}");

    let missing = kiln.run(&["build", &server.url("/missing.tar")]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("/missing.tar"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn an_http_file_as_a_named_context_is_not_unpacked() {
    let kiln = Kiln::new();
    let files = HashMap::from([("/tool.bin".to_string(), b"binary\n".to_vec())]);
    let server = FileServer::start(files);
    let context = kiln.context(
        "main",
        &[(
            "Dockerfile",
            "FROM scratch\nCOPY --from=tool tool.bin /tool\n",
        )],
    );
    let named = format!("tool={}", server.url("/tool.bin"));
    let rootfs = build_rootfs(
        &kiln,
        "out",
        &["--build-context", &named, path_str(&context)],
    );
    let mut content = String::new();
    std::fs::File::open(rootfs.join("tool"))
        .and_then(|mut file| file.read_to_string(&mut content))
        .expect("read /tool");
    assert_eq!(content, "binary\n");
}

// ---------------------------------------------------------------------------------------------
// OCI layout contexts.

#[test]
fn an_oci_layout_is_a_named_image_for_the_target_platform() {
    let maker = Kiln::new();
    let amd64 = arch_image(&maker, "docker.io/library/multi:amd64", "amd64");
    let arm64 = arch_image(&maker, "docker.io/library/multi:arm64", "arm64");
    let (layout, index_digest) = common::multi_platform_layout(
        &maker,
        "layout",
        &[
            (
                "multi:amd64",
                &amd64,
                serde_json::json!({"os": "linux", "architecture": "amd64"}),
            ),
            (
                "multi:arm64",
                &arm64,
                serde_json::json!({"os": "linux", "architecture": "arm64"}),
            ),
        ],
        serde_json::json!({"org.opencontainers.image.ref.name": "v1"}),
    );

    let kiln = Kiln::new();
    let context = kiln.context(
        "main",
        &[(
            "Dockerfile",
            "FROM base\nCOPY --from=base /arch /copied-arch\n",
        )],
    );
    for (value, arch) in [
        (
            format!("base=oci-layout://{}:v1", layout.display()),
            "arm64",
        ),
        (
            format!("base=oci-layout://{}:v1", layout.display()),
            "amd64",
        ),
        (
            format!("base=oci-layout://{}@{index_digest}", layout.display()),
            "arm64",
        ),
        // The only image of the layout, without a tag.
        (format!("base=oci-layout://{}", layout.display()), "amd64"),
    ] {
        let platform = format!("linux/{arch}");
        let rootfs = build_rootfs(
            &kiln,
            &format!("out-{arch}"),
            &[
                "--platform",
                &platform,
                "--build-context",
                &value,
                path_str(&context),
            ],
        );
        assert_eq!(read(rootfs.join("arch")), format!("{arch}\n"), "{value}");
        assert_eq!(read(rootfs.join("copied-arch")), format!("{arch}\n"));
        std::fs::remove_dir_all(&rootfs).unwrap();
    }

    // `--pull` re-resolves tags from registries; the layout's image is pinned by digest.
    let value = format!("base=oci-layout://{}:v1", layout.display());
    let rootfs = build_rootfs(
        &kiln,
        "pulled",
        &[
            "--pull",
            "--platform",
            "linux/amd64",
            "--build-context",
            &value,
            path_str(&context),
        ],
    );
    assert_eq!(read(rootfs.join("arch")), "amd64\n");

    let missing = kiln.run(&[
        "build",
        "--build-context",
        &format!("base=oci-layout://{}:v2", layout.display()),
        path_str(&context),
    ]);
    assert!(!missing.status.success());
    let message = stderr(&missing);
    assert!(message.contains("no image :v2"), "{message}");
}

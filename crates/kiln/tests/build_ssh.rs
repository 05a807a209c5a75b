//! `RUN --mount=type=ssh` and `kiln build --ssh` end to end, with a real OpenSSH `ssh-agent` and
//! `ssh-add` (busybox has no SSH client: the host's `ssh-add`, its libraries and the dynamic loader
//! are copied into the build context and COPY'd into the image). Checks what BuildKit users rely
//! on: the agent's identities reach the step, `SSH_AUTH_SOCK` names the first ssh mount, the
//! mount's owner applies, nothing (socket, key, path) reaches a layer or the config, another
//! agent keeps the cache key, `required=true` without `--ssh` fails naming the line and the id,
//! and `--ssh ID=KEYFILE` works without any agent of the user's.

mod common;
mod layout_helpers;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::{Kiln, build_busybox_with_kiln, have_or_skip, stderr};
use layout_helpers::{Layout, all_output, files_containing};

/// A real `ssh-agent -D` on a socket in its own temp dir, killed when dropped.
struct TestAgent {
    child: Child,
    _dir: tempfile::TempDir,
    socket: PathBuf,
}

impl TestAgent {
    /// Starts an agent holding `keys`.
    fn start(keys: &[&Path]) -> TestAgent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let mut child = Command::new("ssh-agent")
            .args(["-D", "-s", "-a"])
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start ssh-agent");
        // It prints its environment once it listens.
        let stdout = child.stdout.take().unwrap();
        let ready = BufReader::new(stdout)
            .lines()
            .map(|line| line.unwrap())
            .any(|line| line.starts_with("echo Agent pid"));
        assert!(ready, "ssh-agent did not start");
        let agent = TestAgent {
            child,
            _dir: dir,
            socket,
        };
        for key in keys {
            let added = Command::new("ssh-add")
                .arg(key)
                .env("SSH_AUTH_SOCK", &agent.socket)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(added.status.success(), "{}", all_output(&added));
        }
        agent
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new ed25519 key without passphrase at `dir/name` with `comment`; returns its path and its
/// fingerprint (`SHA256:…`).
fn keygen(dir: &Path, name: &str, comment: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let made = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", all_output(&made));
    let listed = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(path.with_extension("pub"))
        .output()
        .unwrap();
    let text = String::from_utf8(listed.stdout).unwrap();
    let fingerprint = text.split_whitespace().nth(1).unwrap().to_string();
    assert!(fingerprint.starts_with("SHA256:"), "{text}");
    (path, fingerprint)
}

/// `ssh-add` with its shared libraries and the dynamic loader, at their own paths under
/// `context/sysroot`, as `ldd` lists them.
fn copy_ssh_add_into(context: &Path) {
    let sysroot = context.join("sysroot");
    let mut files = vec![PathBuf::from("/usr/bin/ssh-add")];
    let ldd = Command::new("ldd")
        .arg("/usr/bin/ssh-add")
        .output()
        .unwrap();
    assert!(ldd.status.success(), "{}", all_output(&ldd));
    for line in String::from_utf8(ldd.stdout).unwrap().lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let path = line
            .split_whitespace()
            .find(|word| word.starts_with('/'))
            .map(PathBuf::from);
        files.extend(path);
    }
    for file in files {
        let dest = sysroot.join(file.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&file, &dest).unwrap();
    }
}

/// A context with `dockerfile` and `ssh-add` in `sysroot/`.
fn ssh_context(kiln: &Kiln, name: &str, dockerfile: &str) -> PathBuf {
    let context = kiln.context(name, &[("Dockerfile", dockerfile)]);
    copy_ssh_add_into(&context);
    context
}

fn tools_present() -> bool {
    ["ssh-agent", "ssh-add", "ssh-keygen", "ldd"]
        .iter()
        .all(|tool| have_or_skip(tool))
}

/// `kiln build --progress=plain ARGS… CONTEXT` without the caller's `SSH_AUTH_SOCK`.
fn build(kiln: &Kiln, context: &Path, args: &[&str]) -> Output {
    kiln.command()
        .args(["build", "--progress=plain"])
        .args(args)
        .arg(context)
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .unwrap()
}

const LIST_DOCKERFILE: &str = "FROM busybox\n\
COPY sysroot/ /\n\
RUN --mount=type=ssh echo \"sock=$SSH_AUTH_SOCK\" && ssh-add -l && echo listed > /listed\n\
USER 1000\n\
RUN --mount=type=ssh,id=deploy,target=/tmp/agent,uid=1000 sh -c 'echo \"user-sock=$SSH_AUTH_SOCK owner=$(stat -c %u:%a /tmp/agent)\"; SSH_AUTH_SOCK=/tmp/agent ssh-add -l'\n";

#[test]
fn the_agents_identities_reach_the_step_and_nothing_reaches_the_image() {
    if !tools_present() {
        return;
    }
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let (key, fingerprint) = keygen(kiln.work.path(), "id_test", "kiln-test@ssh");
    let agent = TestAgent::start(&[&key]);
    let context = ssh_context(&kiln, "list", LIST_DOCKERFILE);
    let archive = kiln.work.path().join("list.tar");
    let output_arg = format!("type=oci,dest={}", archive.display());
    let default_arg = format!("default={}", agent.socket.display());
    let deploy_arg = format!("deploy={}", agent.socket.display());
    let output = build(
        &kiln,
        &context,
        &[
            "--output",
            &output_arg,
            "--ssh",
            &default_arg,
            "--ssh",
            &deploy_arg,
        ],
    );
    assert!(output.status.success(), "{}", all_output(&output));
    let progress = stderr(&output);
    assert!(
        progress.contains("sock=/run/buildkit/ssh_agent.0"),
        "{progress}"
    );
    assert!(
        progress.matches(&fingerprint).count() == 2 && progress.contains("kiln-test@ssh"),
        "{progress}"
    );
    // The first ssh mount's target, and the step sees the proxy with the mount's owner and mode.
    assert!(
        progress.contains("user-sock=/tmp/agent owner=1000:600"),
        "{progress}"
    );
    assert!(
        !progress.contains(agent.socket.to_str().unwrap()),
        "{progress}"
    );

    let layout = Layout::open(&archive, &kiln.work.path().join("list-layout"));
    for entry in layout.layer_entries().into_iter().flatten() {
        assert!(
            !entry.contains("ssh_agent") && !entry.contains("tmp/agent"),
            "{entry}"
        );
    }
    let layers = layout.extract_layers(&kiln.work.path().join("list-layers"));
    let private_key = std::fs::read_to_string(&key).unwrap();
    let key_line = private_key.lines().nth(1).unwrap();
    assert!(files_containing(&layout.dir, key_line.as_bytes()).is_empty());
    let agent_path = agent.socket.to_str().unwrap().as_bytes();
    assert!(files_containing(&layout.dir, agent_path).is_empty());
    for layer in &layers {
        assert!(files_containing(layer, key_line.as_bytes()).is_empty());
        for entry in walk(layer) {
            let kind = std::fs::symlink_metadata(&entry).unwrap().file_type();
            assert!(
                !std::os::unix::fs::FileTypeExt::is_socket(&kind),
                "{entry:?}"
            );
        }
    }
    assert!(layers.iter().any(|layer| layer.join("listed").is_file()));
    let config = serde_json::to_string(&layout.config["config"]).unwrap();
    assert!(!config.contains("SSH_AUTH_SOCK"), "{config}");
    assert!(!config.contains(agent.socket.to_str().unwrap()), "{config}");
}

/// Every path under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            }
            found.push(entry.path());
        }
    }
    found
}

#[test]
fn another_agent_keeps_the_cache_key() {
    if !tools_present() {
        return;
    }
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let (first_key, first) = keygen(kiln.work.path(), "first", "first@ssh");
    let (second_key, second) = keygen(kiln.work.path(), "second", "second@ssh");
    let context = ssh_context(
        &kiln,
        "cache",
        "FROM busybox\nCOPY sysroot/ /\nRUN --mount=type=ssh ssh-add -l\n",
    );
    let first_agent = TestAgent::start(&[&first_key]);
    let arg = format!("default={}", first_agent.socket.display());
    let output = build(&kiln, &context, &["--ssh", &arg]);
    assert!(output.status.success(), "{}", all_output(&output));
    assert!(stderr(&output).contains(&first), "{}", stderr(&output));

    let second_agent = TestAgent::start(&[&second_key]);
    let arg = format!("default={}", second_agent.socket.display());
    let again = build(&kiln, &context, &["--ssh", &arg]);
    assert!(again.status.success(), "{}", all_output(&again));
    let text = stderr(&again);
    assert!(
        !text.contains(&second),
        "the step must not run again: {text}"
    );
    assert!(!text.contains("cache miss"), "{text}");
    assert!(text.matches("CACHED").count() >= 2, "{text}");
}

#[test]
fn a_required_ssh_mount_without_ssh_fails_naming_the_line_and_the_id() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context(
        "required",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=ssh,id=gitlab,required=true true\n",
        )],
    );
    let output = build(&kiln, &context, &[]);
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains("Dockerfile:2")
            && text.contains("\"gitlab\"")
            && text.contains("--ssh gitlab"),
        "{text}"
    );
}

#[test]
fn an_optional_ssh_mount_without_ssh_is_skipped_with_ssh_auth_sock_set() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context(
        "optional",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=ssh test ! -e /run/buildkit/ssh_agent.0 && echo \"skipped sock=$SSH_AUTH_SOCK\"\n",
        )],
    );
    let output = build(&kiln, &context, &[]);
    assert!(output.status.success(), "{}", all_output(&output));
    let text = stderr(&output);
    assert!(
        text.contains("skipped sock=/run/buildkit/ssh_agent.0"),
        "{text}"
    );
}

#[test]
fn ssh_default_without_ssh_auth_sock_is_a_clear_error() {
    let kiln = Kiln::new();
    let context = kiln.context("noagent", &[("Dockerfile", "FROM busybox\n")]);
    let output = build(&kiln, &context, &["--ssh", "default"]);
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains("--ssh default") && text.contains("SSH_AUTH_SOCK is not set"),
        "{text}"
    );
}

#[test]
fn a_key_file_works_without_an_agent_of_the_users() {
    if !tools_present() {
        return;
    }
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let (first_key, first) = keygen(kiln.work.path(), "k1", "k1@ssh");
    let (second_key, second) = keygen(kiln.work.path(), "k2", "k2@ssh");
    let context = ssh_context(
        &kiln,
        "keyfile",
        "FROM busybox\nCOPY sysroot/ /\nRUN --mount=type=ssh,id=git,required=true ssh-add -l\n",
    );
    let arg = format!("git={},{}", first_key.display(), second_key.display());
    let output = build(&kiln, &context, &["--ssh", &arg]);
    assert!(output.status.success(), "{}", all_output(&output));
    let text = stderr(&output);
    assert!(text.contains(&first) && text.contains(&second), "{text}");
}

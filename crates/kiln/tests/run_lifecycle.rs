//! Containers started by `kiln run` in one process and reached from others: `kiln ps` lists them,
//! `kiln exec` runs commands inside them, `kiln stop` and `kiln kill` end them; names are unique
//! among running containers, and a `kiln run` killed with -9 leaves no entry `ps` would show.

mod common;

use std::process::{Child, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Kiln, kiln_with_busybox, make_busybox_image_with_config, stderr, stdout};

/// Guard against hanging a test when something never happens; not a timing assertion.
const GIVE_UP: Duration = Duration::from_secs(120);

/// Starts `kiln run <args>` in the background.
fn start(kiln: &Kiln, args: &[&str]) -> Child {
    kiln.command()
        .arg("run")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting kiln run")
}

/// The `kiln ps` rows (after the header).
fn ps_rows(kiln: &Kiln, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["ps"];
    args.extend(extra);
    let output = kiln.ok(&args);
    stdout(&output)
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

/// Polls `kiln ps` until a row names `name`; fails if the `kiln run` ends first.
fn wait_until_listed(kiln: &Kiln, name: &str, run: &mut Child) -> String {
    let deadline = Instant::now() + GIVE_UP;
    loop {
        if let Some(row) = ps_rows(kiln, &[])
            .into_iter()
            .find(|row| row.split_whitespace().last() == Some(name))
        {
            return row;
        }
        if let Some(status) = run.try_wait().unwrap() {
            let output = run_output(run);
            panic!("kiln run ended ({status}) before it was listed: {output}");
        }
        assert!(Instant::now() < deadline, "{name} never showed in kiln ps");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_output(run: &mut Child) -> String {
    use std::io::Read as _;
    let mut text = String::new();
    if let Some(mut err) = run.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    text
}

fn wait_bounded(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + GIVE_UP;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "kiln run did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exec(kiln: &Kiln, args: &[&str]) -> Output {
    let mut all = vec!["exec"];
    all.extend(args);
    kiln.run(&all)
}

#[test]
fn exec_runs_inside_the_named_container_and_stop_ends_it() {
    let kiln = kiln_with_busybox();
    // --init: PID 1 of a namespace ignores SIGTERM it has no handler for (as in Docker without
    // --init, where `docker stop` then waits for the timeout); the init forwards it to sleep.
    let mut run = start(
        &kiln,
        &["--init", "--name", "web", "busybox", "sleep", "1000"],
    );
    let row = wait_until_listed(&kiln, "web", &mut run);
    assert!(row.contains("busybox"), "{row}");
    assert!(row.contains("\"sleep 1000\""), "{row}");
    assert!(row.contains("Up "), "{row}");
    let id_column = row.split_whitespace().next().unwrap().to_string();
    assert_eq!(id_column.len(), 12);

    // The hostname is the short id, as the container sees it.
    let output = exec(&kiln, &["web", "cat", "/etc/hostname"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output).trim(), id_column);

    // A pid inside the namespace: the init is 1, sleep 2, so the shell is small, not a host pid.
    let output = exec(&kiln, &["web", "sh", "-c", "echo $$; cat /proc/1/comm"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let mut lines = text.lines();
    let pid: u32 = lines.next().unwrap().parse().unwrap();
    assert!(pid > 2 && pid < 100, "pid {pid} is not the namespace's");
    assert_eq!(lines.next(), Some("kiln-init"));

    // One exec's files are the next one's (the same root, not a copy).
    let output = exec(&kiln, &["web", "sh", "-c", "echo from-exec > /tmp/shared"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let output = exec(&kiln, &["web", "cat", "/proc/2/root/tmp/shared"]);
    assert_eq!(stdout(&output), "from-exec\n", "{}", stderr(&output));

    // Exit codes pass through; -e, -w and -u apply; ids and id prefixes name it too.
    let output = exec(&kiln, &["web", "sh", "-c", "exit 7"]);
    assert_eq!(output.status.code(), Some(7));
    let output = exec(
        &kiln,
        &[
            "-e",
            "GREETING=hi",
            "-w",
            "/tmp",
            "-u",
            "nobody",
            &id_column,
            "sh",
            "-c",
            "echo $GREETING $PWD $(id -u)",
        ],
    );
    assert_eq!(stdout(&output), "hi /tmp 65534\n", "{}", stderr(&output));
    // The same confinement: no capabilities beyond Docker's default set.
    let output = exec(&kiln, &["web", "grep", "CapBnd", "/proc/self/status"]);
    assert!(
        stdout(&output).contains("00000000a80425fb"),
        "{}",
        stdout(&output)
    );
    // -i feeds stdin; without it the command reads /dev/null.
    let mut piped = kiln
        .command()
        .args(["exec", "-i", "web", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    piped.stdin.take().unwrap().write_all(b"typed\n").unwrap();
    let output = piped.wait_with_output().unwrap();
    assert_eq!(stdout(&output), "typed\n");
    assert_eq!(stdout(&exec(&kiln, &["web", "cat"])), "");
    let output = exec(&kiln, &["web", "no-such-command"]);
    assert_eq!(output.status.code(), Some(127), "{}", stderr(&output));

    // A second container cannot take the name while web runs.
    let output = kiln.run(&["run", "--name", "web", "busybox", "true"]);
    assert_eq!(output.status.code(), Some(125));
    assert!(
        stderr(&output).contains("Conflict. The container name \"/web\" is already in use"),
        "{}",
        stderr(&output)
    );

    let output = kiln.ok(&["stop", "web"]);
    assert_eq!(stdout(&output), "web\n");
    assert_eq!(wait_bounded(&mut run).code(), Some(143));
    assert!(ps_rows(&kiln, &["-a"]).is_empty());
    // The name is free again.
    kiln.ok(&["run", "--name", "web", "busybox", "true"]);
}

/// Runs `kiln exec <args>` until it prints `expected` (the container gets there in its own time).
fn exec_until(kiln: &Kiln, args: &[&str], expected: &str) {
    let deadline = Instant::now() + GIVE_UP;
    loop {
        let output = exec(kiln, args);
        if stdout(&output) == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "kiln exec {args:?} never printed {expected:?}: {}{}",
            stdout(&output),
            stderr(&output)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn files_are_shared_between_the_container_and_exec() {
    let kiln = kiln_with_busybox();
    // The container writes a file, then waits for one from exec and acknowledges it.
    let script = "echo from-container > /tmp/c; \
        while [ ! -e /tmp/from-exec ]; do sleep 0.05; done; \
        echo \"seen $(cat /tmp/from-exec)\" > /tmp/ack; sleep 1000";
    let mut run = start(
        &kiln,
        &["--init", "--name", "files", "busybox", "sh", "-c", script],
    );
    wait_until_listed(&kiln, "files", &mut run);
    exec_until(&kiln, &["files", "cat", "/tmp/c"], "from-container\n");
    let output = exec(&kiln, &["files", "sh", "-c", "echo hello > /tmp/from-exec"]);
    assert!(output.status.success(), "{}", stderr(&output));
    exec_until(&kiln, &["files", "cat", "/tmp/ack"], "seen hello\n");
    // SIGTERM reaches the shell through the init: it dies of it, and so does the container.
    kiln.ok(&["stop", "files"]);
    assert_eq!(wait_bounded(&mut run).code(), Some(143));
}

#[test]
fn kill_sends_the_signal_and_ps_q_lists_ids() {
    let kiln = kiln_with_busybox();
    let mut run = start(&kiln, &["--name", "db", "busybox", "sleep", "1000"]);
    wait_until_listed(&kiln, "db", &mut run);
    let table = stdout(&kiln.ok(&["ps"]));
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap()
        .split("   ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        [
            "CONTAINER ID",
            "IMAGE",
            "COMMAND",
            "CREATED",
            "STATUS",
            "PORTS",
            "NAMES"
        ]
    );
    let ids = stdout(&kiln.ok(&["ps", "-q", "--no-trunc"]))
        .trim()
        .to_string();
    assert_eq!(ids.len(), 64, "{ids}");
    let output = kiln.ok(&["kill", "-s", "KILL", "db"]);
    assert_eq!(stdout(&output), "db\n");
    assert_eq!(wait_bounded(&mut run).code(), Some(137));
}

#[test]
fn stop_kills_a_command_that_ignores_the_signal_after_the_timeout() {
    let kiln = kiln_with_busybox();
    // Without --init, sleep is PID 1 and ignores SIGTERM: stop falls back to SIGKILL.
    let mut run = start(&kiln, &["--name", "stubborn", "busybox", "sleep", "1000"]);
    wait_until_listed(&kiln, "stubborn", &mut run);
    kiln.ok(&["stop", "-t", "1", "stubborn"]);
    assert_eq!(wait_bounded(&mut run).code(), Some(137));
}

#[test]
fn exec_joins_the_containers_cgroups() {
    let kiln = kiln_with_busybox();
    // With limits the container has cgroups of its own (where the host offers them); an exec'd
    // process must land in the same ones, so the limits cover it too.
    let mut run = start(
        &kiln,
        &[
            "-m",
            "64m",
            "--pids-limit",
            "50",
            "--name",
            "limited",
            "busybox",
            "sleep",
            "1000",
        ],
    );
    wait_until_listed(&kiln, "limited", &mut run);
    let output = exec(
        &kiln,
        &[
            "limited",
            "sh",
            "-c",
            "cat /proc/1/cgroup; echo --; cat /proc/$$/cgroup",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    let (container, exec) = text.split_once("--\n").unwrap();
    let limited = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains(":memory:") || l.contains(":pids:") || l.starts_with("0::"))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(limited(container), limited(exec), "{text}");
    kiln.ok(&["kill", "limited"]);
    assert_eq!(wait_bounded(&mut run).code(), Some(137));
}

#[test]
fn stop_sends_the_images_stopsignal() {
    let kiln = Kiln::new();
    make_busybox_image_with_config(
        kiln.root.path(),
        "docker.io/library/stopper:latest",
        serde_json::json!({"StopSignal": "SIGUSR1", "Env": ["PATH=/bin"]}),
    );
    // PID 1 with a handler for SIGUSR1 receives it; SIGTERM (no handler) it would ignore.
    let script = "trap 'exit 42' USR1; echo ready > /tmp/ready; while true; do sleep 0.05; done";
    let mut run = start(&kiln, &["--name", "stopper", "stopper", "sh", "-c", script]);
    wait_until_listed(&kiln, "stopper", &mut run);
    // Only once the trap is set would the signal be caught.
    exec_until(&kiln, &["stopper", "cat", "/tmp/ready"], "ready\n");
    kiln.ok(&["stop", "-t", "600", "stopper"]);
    assert_eq!(wait_bounded(&mut run).code(), Some(42));
}

#[test]
fn unknown_containers_fail_clearly() {
    let kiln = kiln_with_busybox();
    let output = exec(&kiln, &["nope", "true"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("No such container: nope"),
        "{}",
        stderr(&output)
    );
    for command in ["stop", "kill"] {
        let output = kiln.run(&[command, "nope"]);
        assert!(!output.status.success());
        assert!(
            stderr(&output).contains("No such container: nope"),
            "{}",
            stderr(&output)
        );
    }
}

#[test]
fn a_killed_kiln_run_leaves_no_listed_container() {
    let kiln = kiln_with_busybox();
    let mut run = start(&kiln, &["--name", "orphan", "busybox", "sleep", "1000"]);
    wait_until_listed(&kiln, "orphan", &mut run);
    // kill -9 of kiln itself: no cleanup runs, the state stays on disk.
    run.kill().unwrap();
    run.wait().unwrap();
    let deadline = Instant::now() + GIVE_UP;
    while !ps_rows(&kiln, &["-a"]).is_empty() {
        assert!(Instant::now() < deadline, "the stale entry stayed listed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // And its name can be taken again.
    kiln.ok(&["run", "--name", "orphan", "busybox", "true"]);
}

#[test]
fn unnamed_containers_get_a_readable_name() {
    let kiln = kiln_with_busybox();
    let mut run = start(&kiln, &["busybox", "sleep", "1000"]);
    let deadline = Instant::now() + GIVE_UP;
    let row = loop {
        if let Some(row) = ps_rows(&kiln, &[]).into_iter().next() {
            break row;
        }
        assert!(Instant::now() < deadline, "never listed");
        std::thread::sleep(Duration::from_millis(20));
    };
    let name = row.split_whitespace().last().unwrap().to_string();
    assert!(name.contains('_'), "{row}");
    let output = exec(&kiln, &["-t", &name, "tty"]);
    assert_eq!(stdout(&output).trim(), "/dev/pts/0", "{}", stderr(&output));
    kiln.ok(&["kill", &name]);
    assert_eq!(wait_bounded(&mut run).code(), Some(137));
}

//! `kiln run` and the world around the container: stdin (`-i`), terminals (`-t`, `-it` driven
//! through a pty the test opens), signals forwarded to the command, and the store lock that keeps
//! a prune from removing the layers under a running container.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{kiln_with_busybox, stderr, stdout};

/// Runs `command` with `input` on its stdin; returns its output.
fn with_stdin(mut command: Command, input: &[u8]) -> std::process::Output {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn kiln");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).unwrap();
    drop(stdin);
    child.wait_with_output().unwrap()
}

#[test]
fn interactive_attaches_stdin_and_without_it_stdin_is_empty() {
    let kiln = kiln_with_busybox();
    let mut command = kiln.command();
    command.args(["run", "--rm", "-i", "busybox", "sh", "-c", "cat; echo end"]);
    let output = with_stdin(command, b"piped line 1\npiped line 2\n");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "piped line 1\npiped line 2\nend\n");

    let mut command = kiln.command();
    command.args(["run", "--rm", "busybox", "sh", "-c", "cat; echo end"]);
    let output = with_stdin(command, b"not for the container\n");
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "end\n", "stdin is /dev/null without -i");

    // The default Cmd `sh` reads its script from stdin.
    let mut command = kiln.command();
    command.args(["run", "-i", "busybox"]);
    let output = with_stdin(command, b"echo from-stdin-script\nexit 4\n");
    assert_eq!(stdout(&output), "from-stdin-script\n");
    assert_eq!(output.status.code(), Some(4));
}

#[test]
fn tty_gives_the_command_a_terminal() {
    let kiln = kiln_with_busybox();
    // -t alone, output to a pipe: the command still sees a terminal (CRLF line ends).
    let output = kiln.ok(&[
        "run",
        "-t",
        "busybox",
        "sh",
        "-c",
        "tty; echo $TERM; test -t 0 && echo stdin-tty",
    ]);
    assert_eq!(stdout(&output), "/dev/pts/0\r\nxterm\r\nstdin-tty\r\n");
    let output = kiln.ok(&["run", "busybox", "sh", "-c", "tty || true"]);
    assert_eq!(stdout(&output), "not a tty\n");
}

#[test]
fn interactive_tty_through_a_pty() {
    let kiln = kiln_with_busybox();
    let (mut child, mut master) = kiln.spawn_on_pty(&["run", "--rm", "-it", "busybox", "sh"]);
    let mut reader = master.try_clone().unwrap();
    let collected = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buffer) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buffer[..n]);
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    master
        .write_all(b"tty; echo \"answer-$((40+2))\"; stty size\nexit 5\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "kiln run -it did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(master);
    let output = collected.join().unwrap();
    assert_eq!(status.code(), Some(5), "{output}");
    assert!(output.contains("/dev/pts/0\r\n"), "{output:?}");
    assert!(output.contains("answer-42\r\n"), "{output:?}");
}

#[test]
fn sigterm_and_sigint_are_forwarded_to_the_command() {
    let kiln = kiln_with_busybox();
    for (signal, number) in [("TERM", libc::SIGTERM), ("INT", libc::SIGINT)] {
        let script = format!(
            "trap 'echo got-{signal}; exit 42' {signal}; echo ready; while true; do sleep 0.1; done"
        );
        let mut child = kiln
            .command()
            .args(["run", "--rm", "busybox", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        // SAFETY: signalling our own child.
        assert_eq!(unsafe { libc::kill(child.id() as i32, number) }, 0);
        assert_eq!(lines.next().unwrap().unwrap(), format!("got-{signal}"));
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(42), "SIG{signal}");
    }
}

#[test]
fn a_prune_waits_for_a_running_container() {
    let kiln = kiln_with_busybox();
    let mut child = kiln
        .command()
        .args([
            "run",
            "--rm",
            "busybox",
            "sh",
            "-c",
            "echo started; sleep 2; head -1 /etc/passwd; ls /bin/busybox",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    assert_eq!(first, "started\n");
    // Untag the image: only the running container still needs its layers.
    kiln.ok(&["rmi", "busybox"]);
    let pruned = kiln.ok(&["prune", "--all"]);
    let status = child.wait().unwrap();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "container failed: {rest}");
    assert_eq!(rest, "root:x:0:0:root:/root:/bin/sh\n/bin/busybox\n");
    // The prune did run (after the container): the layers are gone now.
    let layers: Vec<_> = std::fs::read_dir(kiln.root.path().join("layers"))
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(
        layers.is_empty(),
        "prune output: {}\nleft: {layers:?}",
        stdout(&pruned)
    );
}

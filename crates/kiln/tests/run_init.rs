//! `kiln run --init`: an init is PID 1 of the container, the command its child; the init reaps
//! orphans, forwards signals to the command, hands it the terminal, and exits with its status (as
//! Docker's `--init`, which runs tini).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{Kiln, kiln_with_busybox, stderr, stdout};

/// Waits for `child`, failing the test (instead of hanging it) if it never ends.
fn wait_bounded(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "kiln run did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_init_is_pid_1_and_the_command_its_child() {
    let kiln = kiln_with_busybox();
    let script = "echo $$; cat /proc/1/comm; set -- $(cat /proc/$$/stat); echo parent=$4";
    let output = kiln.ok(&["run", "--init", "busybox", "sh", "-c", script]);
    assert_eq!(stdout(&output), "2\nkiln-init\nparent=1\n");
    // ps sees the init as PID 1 too.
    let output = kiln.ok(&["run", "--init", "busybox", "ps", "-o", "pid,comm"]);
    let ps = stdout(&output);
    assert!(
        ps.lines()
            .any(|l| l.split_whitespace().eq(["1", "kiln-init"])),
        "{ps}"
    );
    // Without --init the command itself is PID 1, as in Docker.
    // (`read` is a builtin: busybox sh would exec a last external command in its place.)
    let script = "echo $$; read comm < /proc/1/comm; echo $comm";
    let output = kiln.ok(&["run", "busybox", "sh", "-c", script]);
    assert_eq!(stdout(&output), "1\nsh\n");
}

#[test]
fn orphans_are_reaped_and_no_zombie_is_left() {
    let kiln = kiln_with_busybox();
    // The subshell starts a short child and exits at once: the child is orphaned, re-parented to
    // PID 1, and ends. Only an init that reaps makes its /proc entry go away; the loop's cap is a
    // guard against hanging the test, not a time limit on the init.
    let script = r#"
        (sleep 0 & echo $! > /tmp/orphan)
        orphan=$(cat /tmp/orphan)
        tries=0
        while [ -e /proc/$orphan ] && [ $tries -lt 600 ]; do
            tries=$((tries + 1)); sleep 0.1
        done
        [ -e /proc/$orphan ] && echo "left: $(grep State /proc/$orphan/status)" || echo reaped
        # And nothing else is a zombie either.
        grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null || echo no-zombies
    "#;
    let output = kiln.ok(&["run", "--init", "busybox", "sh", "-c", script]);
    assert_eq!(
        stdout(&output),
        "reaped\nno-zombies\n",
        "{}",
        stderr(&output)
    );
}

#[test]
fn exit_codes_pass_through_the_init() {
    let kiln = kiln_with_busybox();
    for (script, code) in [
        ("exit 0", 0),
        ("exit 3", 3),
        ("exit 255", 255),
        // Killed by a signal: 128 + N, as the shell and Docker report it.
        ("kill -9 $$", 137),
        ("kill -TERM $$", 143),
    ] {
        let output = kiln.run(&["run", "--init", "busybox", "sh", "-c", script]);
        assert_eq!(
            output.status.code(),
            Some(code),
            "{script}: {}",
            stderr(&output)
        );
    }
    // Setup errors of the command are still reported as Docker does.
    let output = kiln.run(&["run", "--init", "busybox", "no-such-command"]);
    assert_eq!(output.status.code(), Some(127), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("no-such-command"),
        "{}",
        stderr(&output)
    );
    let output = kiln.run(&["run", "--init", "busybox", "/etc"]);
    assert_eq!(output.status.code(), Some(126), "{}", stderr(&output));
    // Output is complete, and stdin reaches the command.
    let mut child = kiln
        .command()
        .args([
            "run",
            "--init",
            "-i",
            "busybox",
            "sh",
            "-c",
            "cat; echo end",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"in\n").unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "in\nend\n");
}

/// Starts `kiln run <flags> busybox sh -c 'echo ready; exec <rest>'` and waits for "ready".
fn start_ready(kiln: &Kiln, flags: &[&str], rest: &str) -> Child {
    let script = format!("echo ready; exec {rest}");
    let mut child = kiln
        .command()
        .arg("run")
        .args(flags)
        .args(["busybox", "sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    child
}

#[test]
fn sigterm_to_kiln_ends_the_command_through_the_init() {
    let kiln = kiln_with_busybox();
    // `sleep` has no SIGTERM handler: as PID 1 it would ignore the signal, under the init it dies.
    let mut child = start_ready(&kiln, &["--init"], "sleep 100");
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert_eq!(wait_bounded(&mut child).code(), Some(143));

    // SIGUSR1 is forwarded too (and kills a command without a handler).
    let mut child = start_ready(&kiln, &["--init"], "sleep 100");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGUSR1) }, 0);
    assert_eq!(wait_bounded(&mut child).code(), Some(128 + libc::SIGUSR1));

    // Without --init, PID 1 `sleep` ignores it and ends normally, as in Docker.
    let mut child = start_ready(&kiln, &[], "sleep 1");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert_eq!(wait_bounded(&mut child).code(), Some(0));
}

#[test]
fn the_command_owns_the_terminal() {
    let kiln = kiln_with_busybox();
    // The command's process group is the terminal's foreground group (stat fields 5 and 8).
    let script = "tty; set -- $(cat /proc/$$/stat); [ \"$5\" = \"$8\" ] && echo foreground";
    let output = kiln.ok(&["run", "-t", "--init", "busybox", "sh", "-c", script]);
    assert_eq!(stdout(&output), "/dev/pts/0\r\nforeground\r\n");
}

#[test]
fn ctrl_c_on_the_terminal_reaches_the_command() {
    let kiln = kiln_with_busybox();
    let (mut child, mut master) = kiln.spawn_on_pty(&[
        "run",
        "--rm",
        "-it",
        "--init",
        "busybox",
        "sh",
        "-c",
        "echo ready; exec sleep 100",
    ]);
    let mut reader = master.try_clone().unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let collected = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buffer = [0u8; 4096];
        let mut told = false;
        while let Ok(n) = reader.read(&mut buffer) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buffer[..n]);
            if !told && String::from_utf8_lossy(&all).contains("ready") {
                told = true;
                let _ = ready_tx.send(());
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    ready_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the command started");
    // ^C typed on the terminal: the container's terminal turns it into SIGINT for its
    // foreground process group, the command's.
    master.write_all(b"\x03").unwrap();
    let status = wait_bounded(&mut child);
    drop(master);
    let output = collected.join().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGINT), "{output:?}");
}

#[test]
fn a_terminal_resize_reaches_the_command() {
    let kiln = kiln_with_busybox();
    // kiln's own terminal: a pty of the test's, whose size the test sets.
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let set_size = |rows: u16, cols: u16| {
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: an ioctl with a stack winsize on a pty we hold.
        let set = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&pty.master),
                libc::TIOCSWINSZ,
                &size,
            )
        };
        assert_eq!(set, 0);
    };
    set_size(30, 100);
    // The loop's cap only keeps a broken kiln from hanging the test.
    let script = "trap 'stty size' WINCH; echo ready; i=0; \
                  while [ $i -lt 600 ]; do sleep 0.1; i=$((i + 1)); done";
    let mut child = kiln
        .command()
        .args(["run", "-t", "--init", "busybox", "sh", "-c", script])
        .stdin(Stdio::from(pty.slave))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // (Lines end in CR LF or LF, depending on the terminal modes: compare without the CR.)
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(|line| line.unwrap().trim_end_matches('\r').to_string());
    assert_eq!(lines.next().unwrap(), "ready");
    set_size(40, 120);
    // The terminal would signal kiln's foreground group; kiln is not in one here, so: by hand.
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGWINCH) }, 0);
    // kiln's first copy of the size (just after the start) may have signalled the command too,
    // so "30 100" may come first; the new size must follow.
    let mut resized = false;
    for line in lines.by_ref() {
        if line == "40 120" {
            resized = true;
            break;
        }
        assert_eq!(line, "30 100");
    }
    assert!(resized, "the command never saw the new size");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert_eq!(wait_bounded(&mut child).code(), Some(143));
}

#[test]
fn the_init_shows_neither_kilns_command_line_nor_its_environment() {
    let kiln = kiln_with_busybox();
    let script = "tr '\\0' ' ' < /proc/1/cmdline; echo; tr '\\0' ' ' < /proc/1/environ 2>&1; echo";
    let output = kiln
        .command()
        .env("KILN_TEST_HOST_TOKEN", "host-secret-7f3a")
        .args([
            "run",
            "--init",
            "-e",
            "VISIBLE=1",
            "busybox",
            "sh",
            "-c",
            script,
        ])
        .output()
        .expect("run kiln");
    assert!(output.status.success(), "{}", stderr(&output));
    let shown = stdout(&output);
    let cmdline = shown.lines().next().unwrap_or_default();
    assert_eq!(cmdline.trim(), "kiln-init", "{shown}");
    assert!(!shown.contains("host-secret-7f3a"), "{shown}");
    assert!(!shown.contains("busybox"), "{shown}");
}

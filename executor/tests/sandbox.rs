//! The sandbox, for real (as root): output, exit codes, env, cwd, users, namespaces, /dev, /etc files,
//! PID 1 semantics, mounts, pty.

mod common;

use common::{Fixture, is_root, run_capture};
use kiln_executor::{ExitStatus, OverlaySnapshotter};

#[test]
fn echo_output_is_captured() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let (status, stdout, stderr) = run_capture(&fixture.spec("echo hi; echo err >&2"));
    assert_eq!(status, ExitStatus::Exited(0), "stderr: {stderr}");
    assert_eq!(stdout, "hi\n");
    assert_eq!(stderr, "err\n");
}

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use kiln_executor::{
    ExtraMount, Input, LineCallback, NetworkMode, Output, SandboxError, SandboxIo, run,
};

/// Host pids whose command line contains `marker`.
fn host_pids_with(marker: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline)
            .replace('\0', " ")
            .contains(marker)
        {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn exit_codes_are_reported() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    assert_eq!(
        run_capture(&fixture.spec("exit 3")).0,
        ExitStatus::Exited(3)
    );
    assert_eq!(run_capture(&fixture.spec("true")).0, ExitStatus::Exited(0));
    assert_eq!(run_capture(&fixture.spec("false")).0, ExitStatus::Exited(1));
}

#[test]
fn killed_by_signal_is_reported() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let mut spec = fixture.spec("");
    spec.args = vec!["/bin/sleep".into(), "31337".into()];
    let killer = std::thread::spawn(|| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(pid) = host_pids_with("sleep 31337").first() {
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*pid),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .unwrap();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let (status, _, _) = run_capture(&spec);
    killer.join().unwrap();
    assert_eq!(status, ExitStatus::Signaled(9));
    assert_eq!(status.code(), 137);
}

#[test]
fn env_home_and_path_defaults() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let mut spec = fixture.spec("echo \"$FOO|$HOME|$PATH\"");
    spec.env = vec!["FOO=bar baz".into()];
    let (_, stdout, _) = run_capture(&spec);
    assert_eq!(
        stdout,
        "bar baz|/root|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    );

    spec.env = vec!["HOME=/custom".into(), "PATH=/bin".into()];
    spec.user = "app".into();
    let (_, stdout, _) = run_capture(&spec);
    assert_eq!(stdout, "|/custom|/bin\n");
    spec.env.clear();
    assert_eq!(
        run_capture(&spec).1,
        "||/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
            .replace("||", "|/home/app|")
    );
}

#[test]
fn missing_workdir_is_created_for_the_user() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let mut spec = fixture.spec("pwd; touch mine");
    spec.cwd = "/srv/app/deep".into();
    spec.user = "app".into();
    let (status, stdout, stderr) = run_capture(&spec);
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout, "/srv/app/deep\n");
    let kiln_executor::RootMount::Overlay { upper_dir, .. } = fixture.root() else {
        panic!()
    };
    let created = fs::metadata(upper_dir.join("srv/app/deep")).unwrap();
    assert_eq!((created.uid(), created.gid()), (1000, 1000));
    assert!(upper_dir.join("srv/app/deep/mine").is_file());
}

#[test]
fn users_resolve_from_the_image() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let id = |user: &str| {
        let mut spec = fixture.spec("id");
        spec.user = user.into();
        run_capture(&spec).1
    };
    assert_eq!(id(""), "uid=0(root) gid=0(root) groups=0(root)\n");
    assert_eq!(
        id("app"),
        "uid=1000(app) gid=1000(app) groups=50(staff),1000(app)\n"
    );
    assert_eq!(
        id("1000"),
        "uid=1000(app) gid=1000(app) groups=50(staff),1000(app)\n"
    );
    assert_eq!(
        id("1000:50"),
        "uid=1000(app) gid=50(staff) groups=50(staff)\n"
    );
    assert_eq!(
        id("app:staff"),
        "uid=1000(app) gid=50(staff) groups=50(staff)\n"
    );
    assert_eq!(id("4242"), "uid=4242 gid=0(root) groups=0(root)\n");

    let mut spec = fixture.spec("id");
    spec.user = "nobody".into();
    let error = run(&spec, SandboxIo::default()).unwrap_err();
    assert!(matches!(error, SandboxError::User { .. }), "{error}");
    assert!(
        error.to_string().contains("unable to find user nobody"),
        "{error}"
    );
}

#[test]
fn command_is_pid_1_and_daemons_die_with_it() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let started = Instant::now();
    let (status, stdout, _) = run_capture(&fixture.spec("sleep 31338 & echo $$"));
    assert!(status.success());
    assert_eq!(stdout, "1\n");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the step waited for its daemon"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        host_pids_with("sleep 31338").is_empty(),
        "the background sleep outlived the step"
    );
}

#[test]
fn network_none_has_only_loopback_up() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let mut spec =
        fixture.spec("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; ip link show lo");
    spec.network = NetworkMode::None;
    let (status, stdout, stderr) = run_capture(&spec);
    assert!(status.success(), "{stderr}");
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("lo"));
    assert!(lines.next().is_some_and(|l| l.contains("UP")), "{stdout}");
}

#[test]
fn etc_files_are_present_inside_but_not_in_the_upper_dir() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let mut spec = fixture
        .spec("cat /etc/hosts; hostname; cat /etc/hostname; grep -c nameserver /etc/resolv.conf");
    spec.hostname = "builder".into();
    spec.extra_hosts = vec![("db".into(), "10.0.0.5".into())];
    let (status, stdout, stderr) = run_capture(&spec);
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.contains("127.0.0.1\tlocalhost builder\n"),
        "{stdout}"
    );
    assert!(stdout.contains("10.0.0.5\tdb\n"), "{stdout}");
    assert!(stdout.contains("builder\nbuilder\n"), "{stdout}");
    let kiln_executor::RootMount::Overlay { upper_dir, .. } = fixture.root() else {
        panic!()
    };
    for path in [
        "etc/hosts",
        "etc/hostname",
        "etc/resolv.conf",
        "etc",
        "proc",
        "dev",
        "sys",
    ] {
        assert!(
            fs::symlink_metadata(upper_dir.join(path)).is_err(),
            "{path} landed in the upper dir"
        );
    }
}

#[test]
fn dev_proc_and_sys_are_set_up() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let script = "ls /dev | tr '\\n' ' '; echo; \
        echo x > /dev/null && head -c 4 /dev/zero | wc -c; \
        readlink /dev/fd; readlink /dev/ptmx; \
        touch /sys/x 2>/dev/null && echo sys-rw || echo sys-ro; \
        cat /proc/1/cmdline | tr '\\0' ' '; echo; \
        mount | grep -E ' /dev/(pts|shm) ' | cut -d' ' -f1,3,5";
    let (status, stdout, stderr) = run_capture(&fixture.spec(script));
    assert!(status.success(), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    for node in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx", "fd", "stdin",
        "stdout", "stderr",
    ] {
        assert!(
            lines[0].split(' ').any(|n| n == node),
            "/dev lacks {node}: {}",
            lines[0]
        );
    }
    assert_eq!(lines[1].trim(), "4");
    assert_eq!(&lines[2..4], ["/proc/self/fd", "pts/ptmx"]);
    assert_eq!(lines[4], "sys-ro");
    assert!(lines[5].starts_with("/bin/sh -c"), "{}", lines[5]);
    assert_eq!(
        &lines[6..8],
        ["devpts /dev/pts devpts", "shm /dev/shm tmpfs"]
    );
}

#[test]
fn extra_mounts_bind_tmpfs_and_secret() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let host = fixture.tmp.path().join("host");
    fs::create_dir_all(host.join("ro")).unwrap();
    fs::create_dir_all(host.join("rw")).unwrap();
    fs::write(host.join("ro/data"), "read me").unwrap();
    fs::write(host.join("secret"), "s3cret").unwrap();
    let mounts = vec![
        ExtraMount::Bind {
            source: host.join("ro"),
            target: "/mnt/ro".into(),
            read_only: true,
        },
        ExtraMount::Bind {
            source: host.join("rw"),
            target: "/mnt/rw".into(),
            read_only: false,
        },
        ExtraMount::Tmpfs {
            target: "/cache".into(),
            size_bytes: Some(1 << 20),
        },
        ExtraMount::Secret {
            source: host.join("secret"),
            target: "/run/secrets/token".into(),
        },
    ];
    // The stubs for these targets come with the snapshot.
    let tmp2 = tempfile::tempdir().unwrap();
    let snapshot = OverlaySnapshotter.prepare_for(&fixture, tmp2.path(), &mounts);
    let mut spec = fixture.spec(
        "cat /mnt/ro/data; echo; touch /mnt/ro/x 2>/dev/null && echo ro-writable || echo ro-refused; \
         echo out > /mnt/rw/result; cat /run/secrets/token; echo; \
         echo y > /run/secrets/token 2>/dev/null && echo secret-writable || echo secret-refused; \
         df -k /cache | tail -1 | tr -s ' ' | cut -d' ' -f2; echo cached > /cache/f",
    );
    spec.rootfs = snapshot.mount().clone();
    spec.mounts = mounts;
    let (status, stdout, stderr) = run_capture(&spec);
    assert!(status.success(), "{stderr}");
    assert_eq!(
        stdout,
        "read me\nro-refused\ns3cret\nsecret-refused\n1024\n"
    );
    assert_eq!(fs::read_to_string(host.join("rw/result")).unwrap(), "out\n");
    let kiln_executor::RootMount::Overlay { upper_dir, .. } = snapshot.mount() else {
        panic!()
    };
    assert_eq!(
        fs::read_dir(upper_dir).unwrap().count(),
        0,
        "mount stubs or tmpfs content leaked into the upper dir"
    );
}

/// `prepare` over the fixture's layers with the stubs of `mounts`.
trait PrepareFor {
    fn prepare_for(
        &self,
        fixture: &Fixture,
        scratch: &Path,
        mounts: &[ExtraMount],
    ) -> kiln_executor::Snapshot;
}

impl<S: kiln_executor::Snapshotter> PrepareFor for S {
    fn prepare_for(
        &self,
        fixture: &Fixture,
        scratch: &Path,
        mounts: &[ExtraMount],
    ) -> kiln_executor::Snapshot {
        self.prepare(
            &fixture.layers,
            scratch,
            &kiln_executor::mount_stubs(mounts),
        )
        .unwrap()
    }
}

#[test]
fn command_not_found_and_bad_mount_target_are_typed_errors() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let mut spec = fixture.spec("");
    spec.args = vec!["no-such-tool".into()];
    let error = run(&spec, SandboxIo::default()).unwrap_err();
    assert!(
        matches!(&error, SandboxError::CommandNotFound { command } if command == "no-such-tool"),
        "{error}"
    );

    // A target the snapshot was not prepared with: the error names the step.
    let mut spec = fixture.spec("true");
    spec.mounts = vec![ExtraMount::Secret {
        source: "/etc/hostname".into(),
        target: "/nowhere/secret".into(),
    }];
    let error = run(&spec, SandboxIo::default()).unwrap_err().to_string();
    assert!(error.contains("/nowhere/secret"), "{error}");
}

#[test]
fn output_beyond_a_pipe_buffer_on_both_streams_arrives_whole() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    // ~100 KiB per stream, interleaved: more than a pipe holds, so a relay that drained one stream
    // at a time would leave the command blocked writing the other.
    let (status, stdout, stderr) = run_capture(&fixture.spec(
        "i=0; while [ $i -lt 8000 ]; do echo out-line-$i; echo err-line-$i >&2; i=$((i+1)); done",
    ));
    assert_eq!(
        status,
        ExitStatus::Exited(0),
        "stderr tail: {}",
        &stderr[stderr.len().saturating_sub(200)..]
    );
    let out: Vec<&str> = stdout.lines().collect();
    let err: Vec<&str> = stderr.lines().collect();
    assert_eq!(out.len(), 8000);
    assert_eq!(err.len(), 8000);
    assert_eq!(out[7999], "out-line-7999");
    assert_eq!(err[7999], "err-line-7999");
}

#[test]
fn stdin_is_streamed_and_output_arrives_by_line() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let lines = std::sync::Mutex::new(Vec::new());
    let mut callback = LineCallback::new(|line: &[u8]| {
        lines
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(line).into_owned())
    });
    let io = SandboxIo {
        stdin: Input::Reader(Box::new(std::io::Cursor::new(b"one\ntwo\n".to_vec()))),
        stdout: Output::Writer(&mut callback),
        ..SandboxIo::default()
    };
    let status = run(&fixture.spec("cat; printf tail"), io).unwrap();
    assert!(status.success());
    callback.flush().unwrap();
    drop(callback);
    assert_eq!(lines.into_inner().unwrap(), ["one", "two", "tail"]);
}

#[test]
fn pty_mode_gives_a_terminal_from_the_sandbox_devpts() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let mut output = Vec::new();
    let io = SandboxIo {
        stdout: Output::Writer(&mut output),
        tty: true,
        ..SandboxIo::default()
    };
    let mut spec = fixture.spec("tty; echo \"$TERM\"; test -t 0 && test -t 1 && echo both-tty");
    spec.user = "app".into();
    let status = run(&spec, io).unwrap();
    assert!(status.success());
    let text = String::from_utf8_lossy(&output).replace('\r', "");
    assert_eq!(text, "/dev/pts/0\nxterm\nboth-tty\n");
}

#[test]
fn signals_are_forwarded_when_asked() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let mut seen = Vec::new();
    let mut callback = LineCallback::new(|line: &[u8]| {
        if line == b"ready" {
            // The forwarding handlers are installed before output is relayed.
            nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGTERM)
                .unwrap();
        }
        seen.push(String::from_utf8_lossy(line).into_owned());
    });
    let io = SandboxIo {
        stdout: Output::Writer(&mut callback),
        forward_signals: true,
        ..SandboxIo::default()
    };
    let spec = fixture
        .spec("trap 'echo got-term; exit 7' TERM; echo ready; while true; do sleep 0.05; done");
    let status = run(&spec, io).unwrap();
    drop(callback);
    assert_eq!(status, ExitStatus::Exited(7));
    assert_eq!(seen, ["ready", "got-term"]);
}

#[test]
fn limits_are_skipped_cleanly_without_cgroup_v2() {
    if !is_root() || kiln_executor::cgroup::detect() == kiln_executor::cgroup::CgroupSupport::V2 {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let mut spec = fixture.spec("echo limited");
    spec.limits = kiln_executor::ResourceLimits {
        memory_bytes: Some(64 << 20),
        pids_max: Some(64),
    };
    let (status, stdout, _) = run_capture(&spec);
    assert!(status.success());
    assert_eq!(stdout, "limited\n");
}

#[test]
fn secret_file_keeps_host_permissions() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let secret = fixture.tmp.path().join("secret");
    fs::write(&secret, "x").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o400)).unwrap();
    let mounts = vec![ExtraMount::Secret {
        source: secret,
        target: "/run/secrets/s".into(),
    }];
    let tmp2 = tempfile::tempdir().unwrap();
    let snapshot = OverlaySnapshotter.prepare_for(&fixture, tmp2.path(), &mounts);
    let mut spec =
        fixture.spec("stat -c %a /run/secrets/s; cat /run/secrets/s 2>/dev/null || echo denied");
    spec.rootfs = snapshot.mount().clone();
    spec.mounts = mounts;
    spec.user = "app".into();
    assert_eq!(run_capture(&spec).1, "400\ndenied\n");
}

/// Per-run overhead: 50 runs of `true` (prints the average; run with `--ignored --nocapture`).
#[test]
#[ignore]
fn measure_overhead() {
    if !is_root() {
        return;
    }
    for network in [NetworkMode::Host, NetworkMode::None] {
        let fixture = Fixture::new(&OverlaySnapshotter);
        let mut spec = fixture.spec("");
        spec.args = vec!["/bin/true".into()];
        spec.network = network;
        run(&spec, SandboxIo::default()).unwrap();
        let started = Instant::now();
        for _ in 0..50 {
            assert!(run(&spec, SandboxIo::default()).unwrap().success());
        }
        let average = started.elapsed().as_secs_f64() * 1000.0 / 50.0;
        println!(
            "sandbox overhead ({network:?} network): {average:.2} ms per run of `true` (50 runs)"
        );
    }
}

#[test]
fn etc_file_symlinked_in_the_image_is_mounted_at_its_target() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::with_layers(&OverlaySnapshotter, |dir| {
        let layer = dir.join("layer-resolv");
        fs::create_dir_all(layer.join("etc")).unwrap();
        fs::create_dir_all(layer.join("run/resolve")).unwrap();
        fs::write(
            layer.join("run/resolve/resolv.conf"),
            "nameserver 192.0.2.1\n",
        )
        .unwrap();
        std::os::unix::fs::symlink("../run/resolve/resolv.conf", layer.join("etc/resolv.conf"))
            .unwrap();
        vec![layer]
    });
    let (status, stdout, stderr) =
        run_capture(&fixture.spec("readlink /etc/resolv.conf; grep -q 192.0.2.1 /etc/resolv.conf && echo image || echo generated"));
    assert!(status.success(), "{stderr}");
    assert_eq!(
        stdout, "../run/resolve/resolv.conf\ngenerated\n",
        "the generated file is mounted over the link's target"
    );
    let kiln_executor::RootMount::Overlay { upper_dir, .. } = fixture.root() else {
        panic!()
    };
    assert_eq!(fs::read_dir(upper_dir).unwrap().count(), 0);
}

/// The generated /etc files live in each sandbox's own tmpfs: a command may append to them (as in
/// Docker), the change lands neither in the upper dir nor on the host, and the next sandbox gets
/// fresh ones even though both use the same scratch dir.
#[test]
fn etc_files_are_writable_private_and_fresh_per_run() {
    if !is_root() {
        return;
    }
    let fixture = Fixture::new(&OverlaySnapshotter);
    let spec = fixture.spec("echo '10.1.1.1 extra' >> /etc/hosts && grep -c extra /etc/hosts");
    let (status, stdout, stderr) = run_capture(&spec);
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout, "1\n");
    let kiln_executor::RootMount::Overlay { upper_dir, .. } = fixture.root() else {
        panic!()
    };
    assert!(
        fs::symlink_metadata(upper_dir.join("etc")).is_err(),
        "the write reached the upper dir"
    );
    assert_eq!(
        fs::read_dir(&spec.scratch_dir).unwrap().count(),
        0,
        "the sandbox wrote into its scratch dir on the host"
    );
    let (status, stdout, stderr) = run_capture(&fixture.spec("grep -c extra /etc/hosts; true"));
    assert!(status.success(), "{stderr}");
    assert_eq!(stdout, "0\n", "the next sandbox saw the earlier write");
}

/// Sandboxes running at the same time may share one scratch dir: each mounts its own tmpfs there
/// inside its own mount namespace.
#[test]
fn concurrent_sandboxes_share_one_scratch_dir() {
    if !is_root() {
        return;
    }
    let shared = tempfile::tempdir().unwrap();
    let fixtures: Vec<Fixture> = (0..2).map(|_| Fixture::new(&OverlaySnapshotter)).collect();
    std::thread::scope(|scope| {
        let runs: Vec<_> = fixtures
            .iter()
            .enumerate()
            .map(|(index, fixture)| {
                let mut spec = fixture.spec("sleep 0.2; cat /etc/hostname; echo $index > /mine");
                spec.scratch_dir = shared.path().join("sandbox");
                spec.hostname = format!("box{index}");
                spec.env = vec![format!("index={index}")];
                scope.spawn(move || run_capture(&spec))
            })
            .collect();
        for (index, run) in runs.into_iter().enumerate() {
            let (status, stdout, stderr) = run.join().unwrap();
            assert!(status.success(), "{stderr}");
            assert_eq!(stdout, format!("box{index}\n"));
        }
    });
    for (index, fixture) in fixtures.iter().enumerate() {
        let kiln_executor::RootMount::Overlay { upper_dir, .. } = fixture.root() else {
            panic!()
        };
        assert_eq!(
            fs::read_to_string(upper_dir.join("mine")).unwrap(),
            format!("{index}\n")
        );
    }
    assert_eq!(
        fs::read_dir(shared.path().join("sandbox")).unwrap().count(),
        0
    );
}

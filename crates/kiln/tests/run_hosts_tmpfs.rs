//! `--add-host` (on `kiln run` and `kiln build`), `kiln run --tmpfs` and `kiln run --mount`, with
//! Docker's syntax and defaults, driven through the real binary.

mod common;

use common::{Kiln, kiln_with_busybox, stderr, stdout};

/// `kiln run --rm <args>` that must succeed; returns its stdout.
fn run_ok(kiln: &Kiln, args: &[&str]) -> String {
    let mut full = vec!["run", "--rm"];
    full.extend_from_slice(args);
    stdout(&kiln.ok(&full))
}

/// The options of the mount at `target` as the container's /proc/mounts shows them.
fn mount_options(kiln: &Kiln, flags: &[&str], target: &str) -> Vec<String> {
    let mut args = flags.to_vec();
    args.extend(["busybox", "cat", "/proc/mounts"]);
    let mounts = run_ok(kiln, &args);
    let line = mounts
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(target))
        .unwrap_or_else(|| panic!("no mount on {target}:\n{mounts}"));
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields[2], "tmpfs", "{line}");
    fields[3].split(',').map(str::to_string).collect()
}

#[test]
fn add_host_lines_follow_the_defaults() {
    let kiln = kiln_with_busybox();
    let hosts = run_ok(
        &kiln,
        &[
            "--hostname",
            "box",
            "--add-host",
            "db:10.0.0.5",
            "--add-host=cache=fd00::7",
            "--add-host",
            "gw:host-gateway",
            "busybox",
            "cat",
            "/etc/hosts",
        ],
    );
    assert_eq!(
        hosts,
        "127.0.0.1\tlocalhost box\n::1\tlocalhost ip6-localhost ip6-loopback\n\
         10.0.0.5\tdb\nfd00::7\tcache\n127.0.0.1\tgw\n"
    );
}

#[test]
fn bad_add_host_values_are_refused_before_the_container_starts() {
    let kiln = kiln_with_busybox();
    for (flags, says) in [
        (&["--add-host", "db"][..], "NAME:IP"),
        (&["--add-host", "db:300.1.1.1"][..], "not an IPv4 or IPv6"),
        (
            &["--network", "none", "--add-host", "gw:host-gateway"][..],
            "host-gateway",
        ),
    ] {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend(["busybox", "true"]);
        let output = kiln.run(&args);
        assert_eq!(output.status.code(), Some(125), "{flags:?}");
        assert!(
            stderr(&output).contains(says),
            "{flags:?}: {}",
            stderr(&output)
        );
    }
}

#[test]
fn tmpfs_gets_dockers_default_options_and_the_given_ones() {
    let kiln = kiln_with_busybox();
    let options = mount_options(&kiln, &["--tmpfs", "/scratch"], "/scratch");
    for expected in ["rw", "nosuid", "nodev", "noexec"] {
        assert!(options.contains(&expected.to_string()), "{options:?}");
    }
    let options = mount_options(
        &kiln,
        &["--tmpfs", "/scratch:ro,exec,size=1m,mode=700"],
        "/scratch",
    );
    for expected in ["ro", "nosuid", "nodev", "size=1024k", "mode=700"] {
        assert!(options.contains(&expected.to_string()), "{options:?}");
    }
    assert!(!options.contains(&"noexec".to_string()), "{options:?}");

    // noexec by default: a copied binary does not run from there; with `exec` it does.
    // (Named `true`: busybox picks its applet by the name it runs under.)
    let script = "cp /bin/busybox /scratch/true && /scratch/true && echo ran || echo refused";
    assert_eq!(
        run_ok(
            &kiln,
            &["--tmpfs", "/scratch", "busybox", "sh", "-c", script]
        ),
        "refused\n"
    );
    assert_eq!(
        run_ok(
            &kiln,
            &["--tmpfs", "/scratch:exec", "busybox", "sh", "-c", script]
        ),
        "ran\n"
    );
    // The size limit holds.
    let fill =
        "dd if=/dev/zero of=/scratch/big bs=1k count=200 2>/dev/null && echo fit || echo full";
    assert_eq!(
        run_ok(
            &kiln,
            &["--tmpfs", "/scratch:size=100k", "busybox", "sh", "-c", fill]
        ),
        "full\n"
    );
    // Bad options are refused before the container starts.
    let output = kiln.run(&["run", "--tmpfs", "/scratch:colour=red", "busybox", "true"]);
    assert_eq!(output.status.code(), Some(125));
    assert!(stderr(&output).contains("--tmpfs"), "{}", stderr(&output));
}

#[test]
fn tmpfs_contents_stay_out_of_the_next_container() {
    let kiln = kiln_with_busybox();
    run_ok(
        &kiln,
        &[
            "--tmpfs",
            "/tmp",
            "busybox",
            "sh",
            "-c",
            "echo secret > /tmp/file",
        ],
    );
    assert_eq!(
        run_ok(
            &kiln,
            &[
                "busybox",
                "sh",
                "-c",
                "ls /tmp/file 2>/dev/null || echo gone"
            ]
        ),
        "gone\n"
    );
}

#[test]
fn mount_flag_binds_and_mounts_tmpfs_but_has_no_volumes() {
    let kiln = kiln_with_busybox();
    let host = tempfile::tempdir().unwrap();
    std::fs::write(host.path().join("note"), "from the host\n").unwrap();
    let bind = format!(
        "type=bind,source={},target=/data,readonly",
        host.path().display()
    );
    let script = "cat /data/note; touch /data/x 2>/dev/null && echo writable || echo read-only";
    assert_eq!(
        run_ok(&kiln, &["--mount", &bind, "busybox", "sh", "-c", script]),
        "from the host\nread-only\n"
    );
    let options = mount_options(
        &kiln,
        &[
            "--mount",
            "type=tmpfs,dst=/cache,tmpfs-size=65536,tmpfs-mode=1770",
        ],
        "/cache",
    );
    for expected in ["size=64k", "mode=1770", "noexec"] {
        assert!(options.contains(&expected.to_string()), "{options:?}");
    }
    for (value, says) in [
        ("type=volume,src=data,dst=/data", "no volumes"),
        ("src=data,dst=/data", "no volumes"),
        (
            "type=bind,src=/nonexistent-kiln-source,dst=/data",
            "does not exist",
        ),
    ] {
        let output = kiln.run(&["run", "--mount", value, "busybox", "true"]);
        assert_eq!(output.status.code(), Some(125), "{value}");
        assert!(
            stderr(&output).contains(says),
            "{value}: {}",
            stderr(&output)
        );
    }
}

/// Whether the plain progress in `progress` shows the RUN step as CACHED.
fn run_step_cached(progress: &str) -> bool {
    let Some(step) = progress
        .lines()
        .find(|l| l.contains("] RUN "))
        .and_then(|l| l.split(' ').next())
    else {
        panic!("no RUN step in:\n{progress}");
    };
    progress.lines().any(|l| l == format!("{step} CACHED"))
}

#[test]
fn build_add_host_reaches_run_steps_and_their_cache_keys_but_not_the_layers() {
    let kiln = kiln_with_busybox();
    let context = kiln.context(
        "hosts",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN grep -v localhost /etc/hosts > /hosts-seen || true\n",
        )],
    );
    let build = |dest: &str, hosts: &[&str]| {
        let out = kiln.work.path().join(dest);
        let output_spec = format!("type=local,dest={}", out.display());
        let mut args = vec!["build", "--progress", "plain"];
        for host in hosts {
            args.extend(["--add-host", host]);
        }
        args.extend(["--output", &output_spec, context.to_str().unwrap()]);
        let output = kiln.ok(&args);
        (stderr(&output), out)
    };
    let (first, out) = build("first", &["db:10.0.0.5", "gw=host-gateway"]);
    assert!(!run_step_cached(&first), "{first}");
    assert_eq!(
        std::fs::read_to_string(out.join("hosts-seen")).unwrap(),
        "10.0.0.5\tdb\n127.0.0.1\tgw\n"
    );
    // The generated /etc/hosts is the sandbox's own: nothing of it is in the result.
    let etc_hosts = std::fs::read_to_string(out.join("etc/hosts")).unwrap_or_default();
    assert!(!etc_hosts.contains("db"), "{etc_hosts:?}");

    let (second, _) = build("second", &["db:10.0.0.5", "gw=host-gateway"]);
    assert!(
        run_step_cached(&second),
        "the same hosts hit the cache:\n{second}"
    );
    // Other hosts (or none) are another key, as in BuildKit: the step runs again.
    let (third, out) = build("third", &["db:10.0.0.6"]);
    assert!(!run_step_cached(&third), "{third}");
    assert_eq!(
        std::fs::read_to_string(out.join("hosts-seen")).unwrap(),
        "10.0.0.6\tdb\n"
    );
    let (fourth, out) = build("fourth", &[]);
    assert!(!run_step_cached(&fourth), "{fourth}");
    assert_eq!(std::fs::read_to_string(out.join("hosts-seen")).unwrap(), "");

    let output = kiln.run(&[
        "build",
        "--add-host",
        "db:nowhere",
        context.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("--add-host"),
        "{}",
        stderr(&output)
    );
}

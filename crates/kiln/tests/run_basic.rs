//! `kiln run` end to end with Docker's semantics: output and exit codes, entrypoint and command,
//! environment, working dir, user, network, hostname, bind mounts, a read-only root, and the
//! container's files thrown away after each run. The image is a busybox written straight into a
//! temp store (no `kiln build` involved).

mod common;

use std::collections::BTreeMap;
use std::process::Output;

use common::{
    BUSYBOX, Kiln, kiln_with_busybox, make_busybox_image, make_busybox_image_with_config, stderr,
    stdout,
};

fn code(output: &Output) -> Option<i32> {
    output.status.code()
}

/// `kiln run <args>` that must succeed; returns its stdout.
fn run_ok(kiln: &Kiln, args: &[&str]) -> String {
    let mut full = vec!["run", "--rm"];
    full.extend_from_slice(args);
    stdout(&kiln.ok(&full))
}

/// The container's environment as a map (from `env` run with `args` before the image).
fn container_env(kiln: &Kiln, flags: &[&str], image: &str) -> BTreeMap<String, String> {
    let mut args: Vec<&str> = flags.to_vec();
    args.extend([image, "env"]);
    run_ok(kiln, &args)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn echo_prints_and_the_exit_code_passes_through() {
    let kiln = kiln_with_busybox();
    assert_eq!(run_ok(&kiln, &["busybox", "echo", "hi"]), "hi\n");
    // Flags after the image belong to the command, as with docker.
    assert_eq!(run_ok(&kiln, &["busybox", "echo", "-n", "hi"]), "hi");
    for exit in ["0", "3", "255"] {
        let output = kiln.run(&["run", "busybox", "sh", "-c", &format!("exit {exit}")]);
        assert_eq!(code(&output), exit.parse().ok(), "{}", stderr(&output));
    }
    // Stderr stays stderr.
    let output = kiln.run(&["run", "busybox", "sh", "-c", "echo out; echo err >&2"]);
    assert_eq!(stdout(&output), "out\n");
    assert_eq!(stderr(&output), "err\n");
}

#[test]
fn image_is_found_by_short_name_full_name_and_id_prefix() {
    let kiln = Kiln::new();
    let image = make_busybox_image(kiln.root.path(), BUSYBOX);
    let id_hex = image.config.to_string()["sha256:".len()..].to_string();
    for name in [
        "busybox",
        "busybox:latest",
        BUSYBOX,
        &id_hex[..12],
        &format!("sha256:{id_hex}"),
    ] {
        assert_eq!(run_ok(&kiln, &[name, "echo", "found"]), "found\n", "{name}");
    }
}

#[test]
fn entrypoint_and_cmd_combine_as_in_docker() {
    let kiln = Kiln::new();
    make_busybox_image_with_config(
        kiln.root.path(),
        "docker.io/library/ep:latest",
        serde_json::json!({"Entrypoint": ["echo", "ep"], "Cmd": ["default", "cmd"]}),
    );
    make_busybox_image_with_config(
        kiln.root.path(),
        "docker.io/library/cmdonly:latest",
        serde_json::json!({"Cmd": ["echo", "from-cmd"]}),
    );
    // Entrypoint + the image's Cmd.
    assert_eq!(run_ok(&kiln, &["ep"]), "ep default cmd\n");
    // Arguments replace the Cmd, not the entrypoint.
    assert_eq!(run_ok(&kiln, &["ep", "x", "y"]), "ep x y\n");
    // --entrypoint replaces the entrypoint and drops the image's Cmd.
    assert_eq!(run_ok(&kiln, &["--entrypoint", "echo", "ep"]), "\n");
    assert_eq!(
        run_ok(&kiln, &["--entrypoint", "echo", "ep", "a", "b"]),
        "a b\n"
    );
    // --entrypoint "" clears it: the arguments alone are the command.
    assert_eq!(
        run_ok(&kiln, &["--entrypoint", "", "ep", "echo", "plain"]),
        "plain\n"
    );
    // Cmd alone; arguments replace it.
    assert_eq!(run_ok(&kiln, &["cmdonly"]), "from-cmd\n");
    assert_eq!(run_ok(&kiln, &["cmdonly", "echo", "other"]), "other\n");
    // --entrypoint before a Cmd-only image: the image's Cmd is dropped too.
    assert_eq!(
        run_ok(&kiln, &["--entrypoint", "/bin/echo", "cmdonly", "z"]),
        "z\n"
    );
}

#[test]
fn no_command_is_docker_s_error_125() {
    let kiln = Kiln::new();
    make_busybox_image_with_config(
        kiln.root.path(),
        "docker.io/library/bare:latest",
        serde_json::json!({"Env": ["PATH=/bin"]}),
    );
    let output = kiln.run(&["run", "bare"]);
    assert_eq!(code(&output), Some(125));
    assert!(
        stderr(&output).contains("no command specified"),
        "{}",
        stderr(&output)
    );
    let output = kiln.run(&["run", "--entrypoint", "", "bare"]);
    assert_eq!(code(&output), Some(125));
}

#[test]
fn missing_image_and_missing_command_give_docker_s_codes() {
    let kiln = kiln_with_busybox();
    let output = kiln.run(&["run", "nothere"]);
    assert_eq!(code(&output), Some(125));
    assert!(
        stderr(&output).contains(
            "image nothere:latest not found in kiln's store; kiln pull or kiln build it first"
        ),
        "{}",
        stderr(&output)
    );
    let output = kiln.run(&["run", "busybox", "no-such-command"]);
    assert_eq!(code(&output), Some(127));
    assert!(
        stderr(&output).contains("\"no-such-command\": executable file not found in $PATH"),
        "{}",
        stderr(&output)
    );
    let output = kiln.run(&["run", "busybox", "/no/such/file"]);
    assert_eq!(code(&output), Some(127), "{}", stderr(&output));
    // A directory (or a file without x permission) is there but cannot be executed.
    let output = kiln.run(&["run", "busybox", "/etc"]);
    assert_eq!(code(&output), Some(126), "{}", stderr(&output));
    let output = kiln.run(&["run", "busybox", "/etc/passwd"]);
    assert_eq!(code(&output), Some(126), "{}", stderr(&output));
    // kiln's own errors before the start are 125 as well.
    let output = kiln.run(&["run", "-w", "relative", "busybox", "true"]);
    assert_eq!(code(&output), Some(125));
    assert!(
        stderr(&output).contains("absolute path"),
        "{}",
        stderr(&output)
    );
    let output = kiln.run(&["run", "-u", "ghost", "busybox", "true"]);
    assert_eq!(code(&output), Some(125));
    assert!(stderr(&output).contains("ghost"), "{}", stderr(&output));
}

#[test]
fn env_comes_from_image_then_env_files_then_flags() {
    let kiln = Kiln::new();
    make_busybox_image_with_config(
        kiln.root.path(),
        "docker.io/library/envy:latest",
        serde_json::json!({
            "Env": ["FROM_IMAGE=1", "OVER=image", "PATH=/bin:/usr/bin"],
            "Cmd": ["sh"],
        }),
    );
    let env_file = kiln.work.path().join("vars.env");
    std::fs::write(
        &env_file,
        "# a comment\n\nOVER=file\nFILE_ONLY=with spaces \nFROM_KILN\nNOT_SET_ANYWHERE\n",
    )
    .unwrap();
    let env_file = env_file.to_str().unwrap();
    let output = kiln
        .command()
        .env("FROM_KILN", "kiln-value")
        .env("PASSED", "passed-value")
        .env_remove("NOT_SET_ANYWHERE")
        .args([
            "run",
            "--rm",
            "--env-file",
            env_file,
            "-e",
            "OVER=flag",
            "-e",
            "PASSED",
            "-e",
            "NOT_SET_ANYWHERE",
            "-e",
            "EMPTY=",
            "envy",
            "env",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let env: BTreeMap<String, String> = stdout(&output)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let get = |k: &str| env.get(k).map(String::as_str);
    assert_eq!(get("FROM_IMAGE"), Some("1"));
    assert_eq!(
        get("OVER"),
        Some("flag"),
        "-e wins over the env file and the image"
    );
    assert_eq!(get("FILE_ONLY"), Some("with spaces "));
    assert_eq!(get("FROM_KILN"), Some("kiln-value"));
    assert_eq!(get("PASSED"), Some("passed-value"));
    assert_eq!(get("EMPTY"), Some(""));
    assert_eq!(get("NOT_SET_ANYWHERE"), None);
    assert_eq!(get("PATH"), Some("/bin:/usr/bin"), "the image's PATH");
    assert_eq!(get("HOME"), Some("/root"));

    // Without any Env in the image: Docker's default PATH.
    let kiln = Kiln::new();
    make_busybox_image_with_config(
        kiln.root.path(),
        "docker.io/library/noenv:latest",
        serde_json::json!({"Cmd": ["sh"]}),
    );
    let env = container_env(&kiln, &[], "noenv");
    assert_eq!(
        env.get("PATH").map(String::as_str),
        Some("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    );
    // An env file that does not exist is kiln's error.
    let output = kiln.run(&["run", "--env-file", "/nonexistent.env", "noenv", "true"]);
    assert_eq!(code(&output), Some(125));
    assert!(stderr(&output).contains("/nonexistent.env"));
}

#[test]
fn workdir_flag_overrides_the_image_and_is_created() {
    let kiln = Kiln::new();
    make_busybox_image_with_config(
        kiln.root.path(),
        "docker.io/library/wd:latest",
        serde_json::json!({"WorkingDir": "/srv/app", "Cmd": ["pwd"]}),
    );
    assert_eq!(run_ok(&kiln, &["wd"]), "/srv/app\n");
    assert_eq!(run_ok(&kiln, &["-w", "/new/dir", "wd"]), "/new/dir\n");
    assert_eq!(
        run_ok(
            &kiln,
            &[
                "-w",
                "/tmp",
                "wd",
                "sh",
                "-c",
                "pwd; ls -d /new 2>&1 || true"
            ]
        ),
        "/tmp\nls: /new: No such file or directory\n",
        "the dir made by the last run is gone"
    );
}

#[test]
fn user_flag_overrides_the_image_user() {
    let kiln = Kiln::new();
    make_busybox_image_with_config(
        kiln.root.path(),
        "docker.io/library/asapp:latest",
        serde_json::json!({"User": "app", "Cmd": ["sh"]}),
    );
    let ids = |flags: &[&str]| {
        let mut args = flags.to_vec();
        args.extend(["asapp", "sh", "-c", "echo $(id -u):$(id -g) $HOME"]);
        run_ok(&kiln, &args)
    };
    assert_eq!(ids(&[]), "1000:1000 /home/app\n", "the image's USER");
    assert_eq!(ids(&["-u", "root"]), "0:0 /root\n");
    assert_eq!(ids(&["-u", "1000:50"]), "1000:50 /home/app\n");
    assert_eq!(ids(&["--user", "app"]), "1000:1000 /home/app\n");
    assert_eq!(ids(&["-u", "0:staff"]), "0:50 /root\n");
    let id = run_ok(&kiln, &["-u", "1000:50", "asapp", "id"]);
    assert!(id.starts_with("uid=1000(app) gid=50(staff)"), "{id}");
}

fn interfaces(net_dev: &str) -> Vec<String> {
    net_dev
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .collect()
}

#[test]
fn network_none_has_only_loopback_and_host_is_the_default() {
    let kiln = kiln_with_busybox();
    let none = run_ok(
        &kiln,
        &["--network", "none", "busybox", "cat", "/proc/net/dev"],
    );
    assert_eq!(interfaces(&none), ["lo"]);
    // lo is up: something can listen and connect on it.
    let up = run_ok(
        &kiln,
        &[
            "--network",
            "none",
            "busybox",
            "sh",
            "-c",
            "cat /sys/class/net/lo/operstate; ip link show lo",
        ],
    );
    assert!(up.contains("LOOPBACK,UP"), "{up}");
    let host_ifaces = interfaces(&std::fs::read_to_string("/proc/net/dev").unwrap());
    let default = run_ok(&kiln, &["busybox", "cat", "/proc/net/dev"]);
    let mut seen = interfaces(&default);
    let mut expected = host_ifaces.clone();
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected, "the host's network by default");
    let host = run_ok(
        &kiln,
        &["--network", "host", "busybox", "cat", "/proc/net/dev"],
    );
    assert_eq!(interfaces(&host).len(), host_ifaces.len());
    let output = kiln.run(&["run", "--network", "bridge", "busybox", "true"]);
    assert!(!output.status.success());
}

#[test]
fn hostname_is_random_by_default_or_the_flag() {
    let kiln = kiln_with_busybox();
    let named = run_ok(
        &kiln,
        &[
            "--hostname",
            "box",
            "busybox",
            "sh",
            "-c",
            "hostname; cat /etc/hostname; echo $HOSTNAME; grep -c box /etc/hosts",
        ],
    );
    assert_eq!(named, "box\nbox\nbox\n1\n");
    let first = run_ok(
        &kiln,
        &["busybox", "sh", "-c", "echo $(hostname) $HOSTNAME"],
    );
    let (name, env) = first.trim().split_once(' ').unwrap();
    assert_eq!(name, env);
    assert_eq!(name.len(), 12, "{name}");
    assert!(
        name.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    );
    let second = run_ok(&kiln, &["busybox", "hostname"]);
    assert_ne!(second.trim(), name, "every container gets a new id");
}

#[test]
fn volumes_bind_host_paths_read_write_or_read_only() {
    let kiln = kiln_with_busybox();
    let host = kiln.work.path().join("shared");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("in.txt"), "from host\n").unwrap();
    let rw = format!("{}:/data", host.display());
    let out = run_ok(
        &kiln,
        &[
            "-v",
            &rw,
            "busybox",
            "sh",
            "-c",
            "cat /data/in.txt; echo from container > /data/out.txt",
        ],
    );
    assert_eq!(out, "from host\n");
    assert_eq!(
        std::fs::read_to_string(host.join("out.txt")).unwrap(),
        "from container\n"
    );

    let ro = format!("{}:/mnt/ro:ro", host.display());
    let output = kiln.run(&[
        "run",
        "-v",
        &ro,
        "busybox",
        "sh",
        "-c",
        "cat /mnt/ro/in.txt && echo x > /mnt/ro/new.txt",
    ]);
    assert_eq!(stdout(&output), "from host\n");
    assert_eq!(code(&output), Some(1));
    assert!(
        stderr(&output).contains("Read-only file system"),
        "{}",
        stderr(&output)
    );
    assert!(!host.join("new.txt").exists());

    // A single file, explicitly rw, at a path the image does not have.
    let file = format!("{}:/etc/app/config:rw", host.join("in.txt").display());
    assert_eq!(
        run_ok(&kiln, &["-v", &file, "busybox", "cat", "/etc/app/config"]),
        "from host\n"
    );

    for bad in [
        "relative:/data".to_string(),
        format!("{}:/data", host.join("missing").display()),
        format!("{}:data", host.display()),
        format!("{}:/data:bogus", host.display()),
    ] {
        let output = kiln.run(&["run", "-v", &bad, "busybox", "true"]);
        assert_eq!(code(&output), Some(125), "{bad}");
        assert!(
            stderr(&output).contains("invalid volume"),
            "{}",
            stderr(&output)
        );
    }
}

#[test]
fn read_only_root_refuses_writes_but_mounts_stay_writable() {
    let kiln = kiln_with_busybox();
    let host = kiln.work.path().join("rw");
    std::fs::create_dir_all(&host).unwrap();
    let volume = format!("{}:/out", host.display());
    let output = kiln.run(&[
        "run", "--read-only", "-v", &volume, "busybox", "sh", "-c",
        "touch /x 2>&1; mkdir /tmp/y 2>&1; echo ok > /out/f; cat /etc/passwd | head -1; ls /proc/self >/dev/null && echo proc",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    assert!(out.contains("touch: /x: Read-only file system"), "{out}");
    assert!(
        out.contains("mkdir: can't create directory '/tmp/y': Read-only file system"),
        "{out}"
    );
    assert!(out.contains("root:x:0:0"), "{out}");
    assert!(out.contains("proc"), "{out}");
    assert_eq!(std::fs::read_to_string(host.join("f")).unwrap(), "ok\n");
    // Without the flag the same write works.
    assert_eq!(
        run_ok(&kiln, &["busybox", "sh", "-c", "touch /x && echo wrote"]),
        "wrote\n"
    );
    // Nothing of the read-only mount is left on the host.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(kiln.root.path().to_str().unwrap()),
        "{mounts}"
    );
}

#[test]
fn container_files_are_not_kept_after_the_run() {
    let kiln = kiln_with_busybox();
    assert_eq!(
        run_ok(
            &kiln,
            &[
                "busybox",
                "sh",
                "-c",
                "echo kept > /root/file && rm /bin/vi && cat /root/file"
            ]
        ),
        "kept\n"
    );
    let output = kiln.run(&["run", "busybox", "sh", "-c", "test -e /root/file"]);
    assert_eq!(
        code(&output),
        Some(1),
        "a file written by the last run is gone"
    );
    assert_eq!(
        run_ok(
            &kiln,
            &["busybox", "sh", "-c", "test -e /bin/vi && echo back"]
        ),
        "back\n"
    );
    // Same with --rm (accepted; containers are never kept either way) and without it.
    kiln.ok(&["run", "--name", "first", "busybox", "touch", "/made"]);
    let output = kiln.run(&["run", "busybox", "test", "-e", "/made"]);
    assert_eq!(code(&output), Some(1));
    // No snapshot or sandbox dir is left in the store.
    let leftovers: Vec<_> = walk(&kiln.root.path().join("tmp"));
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let output = kiln.run(&["run", "--name", "bad name", "busybox", "true"]);
    assert_eq!(code(&output), Some(125));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            found.push(entry.path());
            found.extend(walk(&entry.path()));
        }
    }
    found
}

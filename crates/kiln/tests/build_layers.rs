//! Layers that RUN steps produce, end to end with the real binary and checked by independent
//! consumers: whiteouts (a deleted file, a directory deleted and recreated, a rename), hardlinks,
//! a fifo, a setuid file and a sticky directory, read back with `umoci unpack` and with
//! `docker load` + `docker run`; a 70-layer build; a RUN that forks a daemon; `--network=none`;
//! USER and WORKDIR combinations.

mod common;
mod layout_helpers;

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{Kiln, TestDockerd, build_busybox_with_kiln, stderr, stdout};
use layout_helpers::{Layout, umoci_rootfs};

/// `kiln build --progress=plain -t layers:v1 --output type=oci,dest=<name>.tar ARGS… CONTEXT`.
fn build_oci(kiln: &Kiln, context: &Path, name: &str, args: &[&str]) -> (Layout, Output) {
    let archive = kiln.work.path().join(format!("{name}.tar"));
    let output = kiln
        .command()
        .args(["build", "--progress=plain", "-t", "layers:v1", "--output"])
        .arg(format!("type=oci,dest={}", archive.display()))
        .args(args)
        .arg(context)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "kiln build failed:\n{}",
        stderr(&output)
    );
    let layout = Layout::open(&archive, &kiln.work.path().join(format!("{name}-layout")));
    (layout, output)
}

/// The merged root filesystem: `umoci unpack`, or (without umoci) `--output type=local`.
fn rootfs(kiln: &Kiln, context: &Path, layout: &Layout, name: &str, args: &[&str]) -> PathBuf {
    if let Some(rootfs) = umoci_rootfs(
        layout,
        "v1",
        &kiln.work.path().join(format!("{name}-bundle")),
    ) {
        return rootfs;
    }
    let dest = kiln.work.path().join(format!("{name}-rootfs"));
    let mut all = vec!["build", "-q", "--output"];
    let output_arg = format!("type=local,dest={}", dest.display());
    all.push(&output_arg);
    all.extend_from_slice(args);
    all.push(context.to_str().unwrap());
    kiln.ok(&all);
    dest
}

fn read(root: &Path, path: &str) -> String {
    std::fs::read_to_string(root.join(path))
        .unwrap_or_else(|e| panic!("read {path} in {}: {e}", root.display()))
}

const WHITEOUTS: &str = "FROM busybox
RUN mkdir -p /data/dir/sub /data/stickydir && echo a > /data/del.txt && echo keep > /data/keep.txt && echo old > /data/dir/sub/old && echo r > /data/rename-me && echo h > /data/hl-src
RUN rm /data/del.txt
RUN rm -rf /data/dir && mkdir -p /data/dir && echo new > /data/dir/fresh
RUN mv /data/rename-me /data/renamed
RUN ln /data/hl-src /data/hl-dst && echo pair > /data/pair-a && ln /data/pair-a /data/pair-b
RUN mkfifo /data/fifo
RUN cp /bin/busybox /data/suid && chmod 4755 /data/suid
RUN chmod 1777 /data/stickydir
";

/// What a shell in the built image reports about `/data`; the same script runs under docker. (No
/// directory link counts: overlayfs reports 1 for merged dirs.)
const REPORT: &str = "cd /data && ls -A . && echo -- && ls -A dir && echo -- && cat renamed keep.txt dir/fresh && stat -c '%n %a %F' suid stickydir fifo && stat -c '%n %h' hl-src hl-dst pair-a && test $(stat -c %i hl-src) = $(stat -c %i hl-dst) && test $(stat -c %i pair-a) = $(stat -c %i pair-b) && echo linked";

const EXPECTED_REPORT: &str = "dir\nfifo\nhl-dst\nhl-src\nkeep.txt\npair-a\npair-b\nrenamed\nstickydir\nsuid\n--\nfresh\n--\nr\nkeep\nnew\nsuid 4755 regular file\nstickydir 1777 directory\nfifo 644 fifo\nhl-src 2\nhl-dst 2\npair-a 2\nlinked\n";

#[test]
fn whiteouts_hardlinks_and_special_files_survive_umoci_unpack() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context("whiteouts", &[("Dockerfile", WHITEOUTS)]);
    let (layout, _) = build_oci(&kiln, &context, "whiteouts", &[]);
    // Each step is a layer, and the deletions are whiteouts in theirs.
    let entries = layout.layer_entries();
    assert_eq!(entries.len(), 9, "{entries:?}");
    assert!(
        entries[2].contains(&"data/.wh.del.txt".to_string()),
        "{:?}",
        entries[2]
    );
    assert!(
        entries[3].contains(&"data/dir/.wh..wh..opq".to_string())
            || entries[3].contains(&"data/.wh.dir".to_string()),
        "{:?}",
        entries[3]
    );
    assert!(
        entries[4].contains(&"data/.wh.rename-me".to_string()),
        "{:?}",
        entries[4]
    );

    let root = rootfs(&kiln, &context, &layout, "whiteouts", &[]);
    let data = root.join("data");
    let mut names: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "dir",
            "fifo",
            "hl-dst",
            "hl-src",
            "keep.txt",
            "pair-a",
            "pair-b",
            "renamed",
            "stickydir",
            "suid"
        ]
    );
    let dir: Vec<_> = std::fs::read_dir(data.join("dir"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(dir, ["fresh"]);
    assert_eq!(read(&data, "renamed"), "r\n");
    let meta = |name: &str| std::fs::symlink_metadata(data.join(name)).unwrap();
    assert_eq!(meta("suid").permissions().mode() & 0o7777, 0o4755);
    assert_eq!(meta("stickydir").permissions().mode() & 0o7777, 0o1777);
    assert!(meta("fifo").file_type().is_fifo());
    assert_eq!(meta("hl-src").ino(), meta("hl-dst").ino());
    assert_eq!(meta("pair-a").ino(), meta("pair-b").ino());
    assert_eq!(meta("hl-src").nlink(), 2);
}

#[test]
fn whiteouts_hardlinks_and_special_files_survive_docker_load_and_run() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context("whiteouts-docker", &[("Dockerfile", WHITEOUTS)]);
    let archive = kiln.build_to(
        "docker",
        "whiteouts-docker.tar",
        &context,
        &["-t", "kiln-layers:1"],
    );
    // The same report from kiln's own sandbox first, so a docker mismatch is clearly docker's view
    // (a rebuild into kiln's store, all cached).
    kiln.ok(&[
        "build",
        "-q",
        "-t",
        "kiln-layers:1",
        context.to_str().unwrap(),
    ]);
    let ran = kiln.ok(&["run", "--rm", "kiln-layers:1", "sh", "-c", REPORT]);
    assert_eq!(stdout(&ran), EXPECTED_REPORT);

    let Some(dockerd) = TestDockerd::start() else {
        return;
    };
    dockerd.load(&archive);
    let ran = dockerd.run_isolated(&["kiln-layers:1", "sh", "-c", REPORT]);
    assert!(
        ran.status.success(),
        "docker run: {}\n{}",
        stderr(&ran),
        stdout(&ran)
    );
    assert_eq!(stdout(&ran), EXPECTED_REPORT);
}

#[test]
fn seventy_run_steps_make_seventy_one_layers() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let mut dockerfile = String::from("FROM busybox\n");
    for step in 1..=70 {
        dockerfile.push_str(&format!("RUN echo {step} > /layer-{step}\n"));
    }
    dockerfile.push_str("RUN cat /layer-1 /layer-35 /layer-70 > /sum\n");
    let context = kiln.context("deep", &[("Dockerfile", dockerfile.as_str())]);
    let (layout, _) = build_oci(&kiln, &context, "deep", &[]);
    assert_eq!(layout.layers().len(), 72);
    assert_eq!(
        layout.config["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .len(),
        72
    );
    let root = rootfs(&kiln, &context, &layout, "deep", &[]);
    assert_eq!(read(&root, "sum"), "1\n35\n70\n");
    for step in 1..=70 {
        assert_eq!(read(&root, &format!("layer-{step}")), format!("{step}\n"));
    }
}

/// Pids of processes whose command line is exactly `args`.
fn processes_running(args: &[&str]) -> Vec<u32> {
    let wanted: Vec<u8> = args
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted))
        .collect()
}

#[test]
fn a_daemon_forked_by_run_neither_blocks_the_step_nor_outlives_it() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    // An unusual duration names the daemon among the host's processes.
    let context = kiln.context(
        "daemon",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN sleep 1717 & echo started > /started\nRUN echo next > /next\n",
        )],
    );
    let started = Instant::now();
    let (layout, _) = build_oci(&kiln, &context, "daemon", &[]);
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(layout.layers().len(), 3);
    let leftover = processes_running(&["sleep", "1717"]);
    assert!(
        leftover.is_empty(),
        "the daemon outlived its step: {leftover:?}"
    );
}

/// Interface names in a `/proc/net/dev` listing.
fn interfaces(listing: &str) -> Vec<String> {
    listing
        .lines()
        .skip(2)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .collect()
}

#[test]
fn network_none_leaves_only_loopback() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context(
        "net",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --network=none cat /proc/net/dev > /net-run\nRUN cat /proc/net/dev > /net-default\n",
        )],
    );
    let (layout, _) = build_oci(&kiln, &context, "net", &[]);
    let root = rootfs(&kiln, &context, &layout, "net", &[]);
    assert_eq!(interfaces(&read(&root, "net-run")), ["lo"]);
    // The default is the host's network, whatever it has.
    let host = std::fs::read_to_string("/proc/net/dev").unwrap();
    let mut default = interfaces(&read(&root, "net-default"));
    let mut expected = interfaces(&host);
    default.sort();
    expected.sort();
    assert_eq!(default, expected);

    // `kiln build --network=none` applies to every RUN.
    let context = kiln.context(
        "net-flag",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN cat /proc/net/dev > /net-flag\n",
        )],
    );
    let (layout, _) = build_oci(&kiln, &context, "net-flag", &["--network=none"]);
    let root = rootfs(&kiln, &context, &layout, "net-flag", &["--network=none"]);
    assert_eq!(interfaces(&read(&root, "net-flag")), ["lo"]);
}

#[test]
fn run_honours_user_and_workdir_combinations() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context(
        "user",
        &[(
            "Dockerfile",
            "FROM busybox\n\
             RUN mkdir /out && chmod 1777 /out\n\
             USER app\n\
             RUN id > /out/id-app\n\
             WORKDIR /not/there/yet\n\
             RUN pwd > /out/pwd && stat -c '%u:%g' . > /out/wd-owner && touch mine\n\
             USER app:staff\n\
             RUN id -u > /out/uid-staff && id -g >> /out/uid-staff\n\
             USER 4242:4343\n\
             WORKDIR relative\n\
             RUN id -u > /out/numeric && id -g >> /out/numeric && pwd >> /out/numeric\n\
             USER root\n\
             RUN id -u > /out/root && stat -c '%u' /not/there/yet/mine >> /out/root\n",
        )],
    );
    let (layout, _) = build_oci(&kiln, &context, "user", &[]);
    let root = rootfs(&kiln, &context, &layout, "user", &[]);
    assert_eq!(
        read(&root, "out/id-app"),
        // The kernel keeps supplementary groups sorted.
        "uid=1000(app) gid=1000(app) groups=50(staff),1000(app)\n"
    );
    assert_eq!(read(&root, "out/pwd"), "/not/there/yet\n");
    // BuildKit creates a missing WORKDIR owned by the current USER.
    assert_eq!(read(&root, "out/wd-owner"), "1000:1000\n");
    assert_eq!(read(&root, "out/uid-staff"), "1000\n50\n");
    assert_eq!(
        read(&root, "out/numeric"),
        "4242\n4343\n/not/there/yet/relative\n"
    );
    assert_eq!(read(&root, "out/root"), "0\n1000\n");
    assert_eq!(layout.config["config"]["User"], "root");
    assert_eq!(
        layout.config["config"]["WorkingDir"],
        "/not/there/yet/relative"
    );
}

//! `RUN --mount` end to end with the real binary: cache mounts that survive between builds and never
//! reach a layer, secrets (`--secret id=…,src=…|env=…`) that reach no layer, config, history or
//! progress output, binds from the context and from a stage that write nothing back, tmpfs, and
//! the errors for a missing required secret and a missing required SSH agent.

mod common;
mod layout_helpers;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Kiln, build_busybox_with_kiln, stderr};
use layout_helpers::{Layout, all_output, contains, files_containing};

/// `kiln build --progress=plain -t mounts:v1 ARGS… CONTEXT`, panicking on failure.
fn build(kiln: &Kiln, context: &Path, args: &[&str]) -> Output {
    let mut all = vec!["build", "--progress=plain", "-t", "mounts:v1"];
    all.extend_from_slice(args);
    all.push(context.to_str().unwrap());
    kiln.ok(&all)
}

/// Builds `context` into an OCI archive under the work dir and opens it.
fn build_oci(kiln: &Kiln, context: &Path, name: &str, args: &[&str]) -> (Layout, Output) {
    let archive = kiln.work.path().join(format!("{name}.tar"));
    let output_arg = format!("type=oci,dest={}", archive.display());
    let mut all = vec!["--output", output_arg.as_str()];
    all.extend_from_slice(args);
    let output = build(kiln, context, &all);
    let layout = Layout::open(&archive, &kiln.work.path().join(format!("{name}-layout")));
    (layout, output)
}

/// Builds `context` with `--output type=local` and returns the root filesystem dir.
fn build_local(kiln: &Kiln, context: &Path, name: &str, args: &[&str]) -> PathBuf {
    let dest = kiln.work.path().join(format!("{name}-rootfs"));
    let output_arg = format!("type=local,dest={}", dest.display());
    let mut all = vec!["--output", output_arg.as_str()];
    all.extend_from_slice(args);
    build(kiln, context, &all);
    dest
}

/// The layers' entries that start with `prefix` (a path without a leading slash).
fn entries_under(layout: &Layout, prefix: &str) -> Vec<String> {
    layout
        .layer_entries()
        .into_iter()
        .flatten()
        .filter(|entry| entry.starts_with(prefix))
        .collect()
}

fn read(root: &Path, path: &str) -> String {
    std::fs::read_to_string(root.join(path))
        .unwrap_or_else(|e| panic!("read {path} in {}: {e}", root.display()))
}

#[test]
fn a_cache_mount_survives_between_builds_and_never_reaches_a_layer() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let first = kiln.context(
        "first",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,target=/var/cache/pkg,id=pkg sh -c 'echo downloaded > /var/cache/pkg/pkg.tar && echo installed > /installed'\nRUN --mount=type=cache,target=/owned,id=owned,uid=1000,gid=50,mode=0750 stat -c '%u %g %a' /owned > /owned-stat\n",
        )],
    );
    let (layout, _) = build_oci(&kiln, &first, "first", &[]);
    assert_eq!(entries_under(&layout, "var/cache"), Vec::<String>::new());
    assert_eq!(entries_under(&layout, "owned/"), Vec::<String>::new());
    assert!(!entries_under(&layout, "installed").is_empty());

    // Another Dockerfile, no cache: the step runs again and sees what the first build left.
    let second = kiln.context(
        "second",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,target=/var/cache/pkg,id=pkg cp /var/cache/pkg/pkg.tar /seen\n",
        )],
    );
    let rootfs = build_local(&kiln, &second, "second", &["--no-cache"]);
    assert_eq!(read(&rootfs, "seen"), "downloaded\n");
    assert!(!rootfs.join("var/cache/pkg").exists());
    let rootfs = build_local(&kiln, &first, "first-local", &["--no-cache"]);
    assert_eq!(read(&rootfs, "owned-stat"), "1000 50 750\n");

    // `kiln prune -a` clears cache mounts.
    kiln.ok(&["prune", "-a"]);
    let third = kiln.context(
        "third",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,target=/var/cache/pkg,id=pkg sh -c 'ls -A /var/cache/pkg > /listing'\n",
        )],
    );
    build_busybox_with_kiln(&kiln);
    let rootfs = build_local(&kiln, &third, "third", &["--no-cache"]);
    assert_eq!(read(&rootfs, "listing"), "");
}

#[test]
fn a_locked_cache_mount_serialises_concurrent_steps() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    // Two stages run in parallel; each reads a counter, waits, and writes it back plus one. Only
    // if they are serialised does the counter reach 2.
    let bump = "RUN --mount=type=cache,target=/c,id=counter,sharing=locked sh -c 'n=$(cat /c/n 2>/dev/null || echo 0); sleep 1; echo $((n+1)) > /c/n'";
    let dockerfile = format!(
        "FROM busybox AS a\n{bump} && touch /a\nFROM busybox AS b\n{bump} && touch /b\nFROM busybox\nCOPY --from=a /a /a\nCOPY --from=b /b /b\n"
    );
    let context = kiln.context("locked", &[("Dockerfile", dockerfile.as_str())]);
    build(&kiln, &context, &[]);
    let check = kiln.context(
        "check",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,target=/c,id=counter cp /c/n /n\n",
        )],
    );
    let rootfs = build_local(&kiln, &check, "check", &["--no-cache"]);
    assert_eq!(read(&rootfs, "n"), "2\n");
}

const SECRET: &str = "s3cr3t-Value-4711";

#[test]
fn a_secret_reaches_the_command_but_no_layer_config_history_or_output() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let secret_file = kiln.work.path().join("token.txt");
    std::fs::write(&secret_file, SECRET).unwrap();
    let dockerfile = format!(
        "FROM busybox\n\
         RUN --mount=type=secret,id=token test \"$(cat /run/secrets/token)\" = {SECRET} && echo ok > /file-ok\n\
         RUN --mount=type=secret,id=token,env=TOKEN test \"$TOKEN\" = {SECRET} && echo ok > /env-ok\n\
         RUN --mount=type=secret,id=fromenv,target=/etc/app/key,uid=1000,mode=0440 sh -c 'test \"$(cat /etc/app/key)\" = {SECRET} && stat -c \"%u %a\" /etc/app/key > /key-stat'\n\
         RUN --mount=type=secret,id=absent test ! -e /run/secrets/absent && echo skipped > /optional\n"
    );
    let context = kiln.context("secret", &[("Dockerfile", dockerfile.as_str())]);
    let secret_arg = format!("id=token,src={}", secret_file.display());
    let archive = kiln.work.path().join("secret.tar");
    let output = kiln
        .command()
        .args(["build", "--progress=plain", "-t", "mounts:v1", "--secret"])
        .arg(&secret_arg)
        .args(["--secret", "id=fromenv,env=KILN_TEST_SECRET"])
        .arg("--output")
        .arg(format!("type=oci,dest={}", archive.display()))
        .arg(&context)
        .env("KILN_TEST_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", all_output(&output));
    // The Dockerfile itself carries the value for the comparisons; only the step descriptions do
    // that, so the progress output is checked without them.
    let progress: String = stderr(&output)
        .lines()
        .filter(|line| !line.contains("RUN --mount"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!progress.contains(SECRET), "{progress}");

    let layout = Layout::open(&archive, &kiln.work.path().join("secret-layout"));
    let layers = layout.extract_layers(&kiln.work.path().join("secret-layers"));
    for layer in &layers {
        let found = files_containing(layer, SECRET.as_bytes());
        assert!(found.is_empty(), "secret in {found:?}");
    }
    assert_eq!(entries_under(&layout, "run/secrets"), Vec::<String>::new());
    assert_eq!(entries_under(&layout, "etc/app"), Vec::<String>::new());
    let last = layers.last().unwrap();
    assert_eq!(read(last, "optional"), "skipped\n");
    let top = &layers[layers.len() - 2];
    assert_eq!(read(top, "key-stat"), "1000 440\n");
    // The config (env, history) never holds the value; history keeps only the RUN text, whose
    // secret is named by id.
    let config = serde_json::to_string(&layout.config).unwrap();
    let without_commands: String = layout.config["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["created_by"].as_str().unwrap_or_default())
        .fold(config.clone(), |text, command| {
            text.replace(&serde_json::to_string(command).unwrap(), "")
        });
    assert!(!without_commands.contains(SECRET), "{config}");
    assert!(!config.contains("TOKEN="), "{config}");
}

#[test]
fn a_secret_only_in_an_id_never_reaches_the_history_or_the_archive() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let secret_file = kiln.work.path().join("token.txt");
    std::fs::write(&secret_file, SECRET).unwrap();
    // The Dockerfile does not contain the value: the whole archive must not either.
    let context = kiln.context(
        "secret-blind",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=secret,id=token sh -c 'cp /run/secrets/token /dev/null && wc -c < /run/secrets/token > /length'\nRUN --mount=type=secret,id=token,env=TOKEN sh -c 'echo ${#TOKEN} > /env-length'\n",
        )],
    );
    let secret_arg = format!("id=token,src={}", secret_file.display());
    let (layout, output) = build_oci(&kiln, &context, "blind", &["--secret", &secret_arg]);
    assert!(!all_output(&output).contains(SECRET));
    let layers = layout.extract_layers(&kiln.work.path().join("blind-layers"));
    assert_eq!(read(layers.last().unwrap(), "env-length").trim(), "17");
    let found = files_containing(&layout.dir, SECRET.as_bytes());
    assert!(found.is_empty(), "secret in {found:?}");
    for layer in &layers {
        assert!(files_containing(layer, SECRET.as_bytes()).is_empty());
    }
    // Changing the secret's value does not invalidate the step (as in BuildKit): the id is the key.
    std::fs::write(&secret_file, "another value").unwrap();
    let again = build(&kiln, &context, &["--secret", &secret_arg]);
    assert!(!contains(&again.stderr, b"another value"));
    assert!(!stderr(&again).contains("cache miss"), "{}", stderr(&again));
    assert!(
        stderr(&again).matches("CACHED").count() >= 2,
        "{}",
        stderr(&again)
    );
}

#[test]
fn a_missing_required_secret_fails_naming_it() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context(
        "required",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=secret,id=npmrc,required=true cat /run/secrets/npmrc\n",
        )],
    );
    let output = kiln.run(&["build", "--progress=plain", context.to_str().unwrap()]);
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains("Dockerfile:2") && text.contains("secret \"npmrc\" is required"),
        "{text}"
    );
    // A --secret pointing at a missing file is refused before anything runs.
    let output = kiln.run(&[
        "build",
        "--secret",
        "id=npmrc,src=/nonexistent/npmrc",
        context.to_str().unwrap(),
    ]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("/nonexistent/npmrc"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_bind_mount_from_the_context_writes_nothing_back_and_is_keyed_by_its_source() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context(
        "bind",
        &[
            (
                "Dockerfile",
                "FROM busybox\n\
                 RUN --mount=type=bind,source=data,target=/mnt/data sh -c 'cat /mnt/data/file.txt > /copied && ! touch /mnt/data/ro 2>/dev/null'\n\
                 RUN --mount=type=bind,source=data,target=/mnt/data,rw sh -c 'echo scribble > /mnt/data/file.txt && echo new > /mnt/data/new && cat /mnt/data/file.txt > /seen-rw'\n\
                 RUN --mount=type=bind,source=data/file.txt,target=/one,rw sh -c 'echo x >> /one && cat /one > /one-rw'\n\
                 RUN --mount=type=tmpfs,target=/scratch sh -c 'echo x > /scratch/f && grep -q \" /scratch tmpfs\" /proc/mounts && echo ok > /tmpfs-ok'\n",
            ),
            ("data/file.txt", "original\n"),
            ("unrelated.txt", "1"),
        ],
    );
    let (layout, _) = build_oci(&kiln, &context, "bind", &[]);
    assert_eq!(
        std::fs::read_to_string(context.join("data/file.txt")).unwrap(),
        "original\n"
    );
    assert!(!context.join("data/new").exists());
    assert!(!context.join("data/ro").exists());
    assert_eq!(entries_under(&layout, "mnt"), Vec::<String>::new());
    assert_eq!(entries_under(&layout, "one"), vec!["one-rw".to_string()]);
    assert_eq!(entries_under(&layout, "scratch"), Vec::<String>::new());
    let layers = layout.extract_layers(&kiln.work.path().join("bind-layers"));
    let n = layers.len();
    assert_eq!(read(&layers[n - 4], "copied"), "original\n");
    assert_eq!(read(&layers[n - 3], "seen-rw"), "scribble\n");
    assert_eq!(read(&layers[n - 2], "one-rw"), "original\nx\n");
    assert_eq!(read(&layers[n - 1], "tmpfs-ok"), "ok\n");

    // An unrelated context file does not invalidate a step that binds `data`; a file it shows does.
    std::fs::write(context.join("unrelated.txt"), "2").unwrap();
    let again = build(&kiln, &context, &[]);
    let text = stderr(&again);
    assert!(!text.contains("cache miss"), "{text}");
    assert!(text.matches("CACHED").count() >= 4, "{text}");
    std::fs::write(context.join("data/file.txt"), "changed\n").unwrap();
    let changed = build(&kiln, &context, &[]);
    assert!(
        stderr(&changed).contains("cache miss"),
        "{}",
        stderr(&changed)
    );
}

#[test]
fn a_bind_mount_of_a_context_subdir_honours_dockerignore_and_only_its_files_key_it() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context(
        "bind-ignore",
        &[
            (
                "Dockerfile",
                "FROM busybox\n\
                 RUN --mount=type=bind,source=data,target=/m ls -a /m > /listing\n",
            ),
            (".dockerignore", "data/*.log\nother\n"),
            ("data/a.txt", "a\n"),
            ("data/debug.log", "noise\n"),
            ("other/big.bin", "big\n"),
        ],
    );
    let rootfs = build_local(&kiln, &context, "bind-ignore", &[]);
    assert_eq!(read(&rootfs, "listing"), ".\n..\na.txt\n");

    // Ignored or unselected files never invalidate the step.
    std::fs::write(context.join("data/debug.log"), "more noise\n").unwrap();
    std::fs::write(context.join("other/big.bin"), "bigger\n").unwrap();
    let again = build(&kiln, &context, &[]);
    assert!(!stderr(&again).contains("cache miss"), "{}", stderr(&again));
}

#[test]
fn a_bind_mount_from_a_stage_reads_its_files() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context(
        "stage-bind",
        &[(
            "Dockerfile",
            "FROM busybox AS build\nRUN mkdir /out && echo built > /out/artifact\n\
             FROM busybox\n\
             RUN --mount=type=bind,from=build,source=/out,target=/in cat /in/artifact > /got\n\
             RUN --mount=type=cache,target=/seeded,from=build,source=/out cat /seeded/artifact > /seed-got\n",
        )],
    );
    let rootfs = build_local(&kiln, &context, "stage-bind", &[]);
    assert_eq!(read(&rootfs, "got"), "built\n");
    assert_eq!(read(&rootfs, "seed-got"), "built\n");
    assert!(!rootfs.join("in").exists() && !rootfs.join("seeded").exists());
}

#[test]
fn a_required_ssh_mount_without_an_agent_is_refused_naming_the_step() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = kiln.context(
        "ssh",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=ssh,required=true true\n",
        )],
    );
    let output = kiln.run(&["build", "--progress=plain", context.to_str().unwrap()]);
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains("Dockerfile:2") && text.contains("type=ssh") && text.contains("is required"),
        "{text}"
    );
}

#[test]
fn testdata_package_manager_build_reuses_its_download_cache() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = common::testdata().join("mounts");
    let token = kiln.work.path().join("registry-token");
    std::fs::write(&token, SECRET).unwrap();
    let secret_arg = format!("id=registry_token,src={}", token.display());
    let (layout, first) = build_oci(&kiln, &context, "pkgs", &["--secret", &secret_arg]);
    let text = stderr(&first);
    assert!(
        text.contains("fetched alpha") && text.contains("fetched beta"),
        "{text}"
    );
    for entry in layout.layer_entries().into_iter().flatten() {
        assert!(
            !entry.starts_with("var/cache")
                && !entry.starts_with("run/")
                && entry != "app/pkgs.list",
            "{entry} is in a layer"
        );
    }
    let layers = layout.extract_layers(&kiln.work.path().join("pkgs-layers"));
    let top = layers.last().unwrap();
    assert_eq!(read(top, "app/alpha"), "alpha payload\n");
    assert!(files_containing(&layout.dir, SECRET.as_bytes()).is_empty());

    let second = build(&kiln, &context, &["--no-cache", "--secret", &secret_arg]);
    let text = stderr(&second);
    assert!(
        text.contains("cached alpha") && text.contains("cached beta"),
        "{text}"
    );

    // Without the token a step that runs stops (a cached one needs no secret, as in BuildKit).
    let output = kiln.run(&["build", "--no-cache", context.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("registry_token"),
        "{}",
        stderr(&output)
    );
}

//! The Dockerfiles under `testdata/`: the README's demo and the multi-stage build.

mod common;

use common::{Kiln, build_busybox_with_kiln, read, stderr, stdout, testdata};

#[test]
fn readme_demo_builds_and_tags_demo() {
    let kiln = Kiln::new();
    let demo = testdata().join("demo");
    let output = kiln.ok(&["build", "-t", "demo", demo.to_str().unwrap()]);
    assert!(stdout(&output).trim().starts_with("sha256:"));
    let out = kiln.build_rootfs(&demo, "rootfs", &[]);
    assert!(out.join("srv/www/index.html").is_file());
    assert!(out.join("srv/www/style.css").is_file());
    assert!(out.join("hello.txt").is_file());
    assert!(
        !out.join("srv/www/draft.md").exists(),
        ".dockerignore keeps drafts out"
    );
}

#[test]
fn multistage_testdata_passes_build_args_through_stages() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let context = testdata().join("build/multistage");
    let out = kiln.work.path().join("rootfs");
    let output = kiln.ok(&[
        "build",
        "--progress",
        "plain",
        "--build-arg",
        "VERSION=2.5",
        "--output",
        &format!("type=local,dest={}", out.display()),
        context.to_str().unwrap(),
    ]);
    assert_eq!(
        read(out.join("usr/share/app/greeting.txt")),
        "hello from version 2.5\n"
    );
    assert_eq!(
        read(out.join("usr/share/app/build-info.txt")),
        "built with kiln\n"
    );
    // The final stage's RUN printed the file built in the first stage.
    assert!(
        stderr(&output)
            .lines()
            .any(|l| l.ends_with(" hello from version 2.5")),
        "{}",
        stderr(&output)
    );
    assert!(
        !out.join("src").exists(),
        "the build stage's files stay out of the final image"
    );
}

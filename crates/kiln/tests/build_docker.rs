//! Images built by `kiln build --output type=docker` load into a real Docker daemon and run there
//! with the config kiln wrote (ENTRYPOINT, CMD, ENV, WORKDIR, USER).

mod common;

use common::{Kiln, TestDockerd, build_busybox_with_kiln, stderr, stdout};

#[test]
fn docker_loads_and_runs_what_kiln_built() {
    let kiln = Kiln::new();
    build_busybox_with_kiln(&kiln);
    let dockerfile = "FROM busybox\nENV WHO=kiln\nWORKDIR /srv\nCOPY greet.sh /usr/local/bin/greet\nRUN chmod 0755 /usr/local/bin/greet\nUSER app\nENTRYPOINT [\"/usr/local/bin/greet\"]\nCMD [\"world\"]\n";
    let context = kiln.context(
        "app",
        &[
            ("Dockerfile", dockerfile),
            (
                "greet.sh",
                "#!/bin/sh\necho \"hello $1 from $WHO in $(pwd) as $(id -u)\"\n",
            ),
        ],
    );
    let archive = kiln.work.path().join("app.tar");
    let output = kiln.ok(&[
        "build",
        "-t",
        "kiln-built:1",
        "--output",
        &format!("type=docker,dest={}", archive.display()),
        context.to_str().unwrap(),
    ]);
    let id = stdout(&output).trim().to_string();
    let Some(dockerd) = TestDockerd::start() else {
        return;
    };
    let loaded = dockerd
        .docker()
        .arg("load")
        .arg("-i")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        loaded.status.success(),
        "docker load: {}\n{}",
        stderr(&loaded),
        dockerd.log_tail()
    );
    assert!(
        stdout(&loaded).contains("kiln-built:1"),
        "{}",
        stdout(&loaded)
    );
    let inspected = dockerd
        .docker()
        .args(["image", "inspect", "--format", "{{.Id}}", "kiln-built:1"])
        .output()
        .unwrap();
    let docker_id = stdout(&inspected).trim().to_string();
    assert!(!docker_id.is_empty(), "{}", stderr(&inspected));
    let ran = dockerd
        .docker()
        .args(["run", "--rm", "--network", "none", "kiln-built:1"])
        .output()
        .unwrap();
    assert!(ran.status.success(), "docker run: {}", stderr(&ran));
    assert_eq!(stdout(&ran), "hello world from kiln in /srv as 1000\n");
    // Docker's image id is kiln's: the config digest.
    assert_eq!(docker_id, id);
}

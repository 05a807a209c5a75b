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
    let loaded = dockerd.load(&archive);
    assert!(loaded.contains("kiln-built:1"), "{loaded}");
    let docker_id = dockerd.image_id("kiln-built:1");
    assert!(!docker_id.is_empty(), "docker knows kiln-built:1");
    let ran = dockerd.run_isolated(&["kiln-built:1"]);
    assert!(ran.status.success(), "docker run: {}", stderr(&ran));
    assert_eq!(stdout(&ran), "hello world from kiln in /srv as 1000\n");
    // Docker's image id is kiln's: the config digest.
    assert_eq!(docker_id, id);
}

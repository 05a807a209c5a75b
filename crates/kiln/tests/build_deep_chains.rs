//! Chains deeper than one page of overlay mount options: a COPY on top of 200 layers must mount its
//! root like a RUN does (the new mount API with one `lowerdir+` per layer). Before the fix, file ops
//! used a single mount(2) and failed with EINVAL once the lower-dir list passed 4 KiB.

mod common;

use common::{Kiln, stderr, stdout};

#[test]
fn copy_on_top_of_200_layers_mounts_its_root() {
    let kiln = Kiln::new();
    let layers = 200;
    let mut dockerfile = String::from("FROM scratch\n");
    let mut files: Vec<(String, String)> = Vec::new();
    for i in 0..layers {
        dockerfile.push_str(&format!("COPY f{i} /f{i}\n"));
        files.push((format!("f{i}"), format!("{i}\n")));
    }
    files.push(("Dockerfile".to_string(), dockerfile));
    let borrowed: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, c)| (p.as_str(), c.as_str()))
        .collect();
    let context = kiln.context("deep", &borrowed);
    let out = kiln.work.path().join("rootfs");
    let output = kiln.run(&[
        "build",
        "--progress",
        "plain",
        "-t",
        "deep",
        "--output",
        &format!("type=local,dest={}", out.display()),
        context.to_str().expect("utf-8 path"),
    ]);
    assert!(
        output.status.success(),
        "{}\n{}",
        stdout(&output),
        stderr(&output)
    );
    for i in [0, 70, layers - 1] {
        assert_eq!(
            std::fs::read_to_string(out.join(format!("f{i}"))).expect("copied file"),
            format!("{i}\n")
        );
    }
}

//! End-to-end tests of `kiln push`, `pull`, `login` and `logout` against a real registry (Debian's
//! `docker-registry` on 127.0.0.1), with Docker's config.json in a temp `DOCKER_CONFIG`.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Output, Stdio};

use common::{
    Kiln, TestRegistry, have, have_or_skip, make_image, push_amd64_arm64_index, skopeo_ok, stderr,
    stdout,
};

const APP: &str = "docker.io/library/app:latest";

/// `kiln` with `DOCKER_CONFIG` set to `config_dir` and `args`, `stdin` fed to it.
fn run_with(kiln: &Kiln, config_dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = kiln
        .command()
        .env("DOCKER_CONFIG", config_dir)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kiln");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("kiln output")
}

fn ok_with(kiln: &Kiln, config_dir: &Path, args: &[&str]) -> String {
    let output = run_with(kiln, config_dir, args, "");
    assert!(
        output.status.success(),
        "kiln {args:?} failed:\n{}\n{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

fn skopeo_digest(reference: &str) -> String {
    skopeo_ok(&[
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        &format!("docker://{reference}"),
    ])
    .trim()
    .to_string()
}

#[test]
fn push_then_pull_into_a_fresh_store_round_trips() {
    let Some(registry) = TestRegistry::start("") else {
        return;
    };
    let config_dir = tempfile::tempdir().expect("docker config dir");
    let kiln = Kiln::new();
    let app = make_image(
        kiln.root.path(),
        APP,
        &[&[("a.txt", "a\n")], &[("b.txt", "b\n")]],
    );
    let destination = format!("{}/team/app:v1", registry.host());

    let pushed = ok_with(&kiln, config_dir.path(), &["push", "app", &destination]);
    assert!(
        pushed.contains(&format!(
            "The push refers to repository [{}/team/app]",
            registry.host()
        )),
        "{pushed}"
    );
    for layer in &app.layer_blobs {
        assert!(
            pushed.contains(&format!("{}: Pushed", &layer.hex()[..12])),
            "{pushed}"
        );
    }
    let size = std::fs::metadata(
        kiln.root
            .path()
            .join("blobs/sha256")
            .join(app.manifest.hex()),
    )
    .expect("manifest blob")
    .len();
    assert!(
        pushed.ends_with(&format!("v1: digest: {} size: {size}\n", app.manifest)),
        "{pushed}"
    );
    if have("skopeo") {
        assert_eq!(skopeo_digest(&destination), app.manifest.to_string());
    }

    let again = ok_with(&kiln, config_dir.path(), &["push", "app", &destination]);
    assert!(again.contains("Layer already exists"), "{again}");

    let fresh = Kiln::new();
    let pulled = ok_with(&fresh, config_dir.path(), &["pull", &destination]);
    assert!(
        pulled.starts_with("v1: Pulling from team/app\n"),
        "{pulled}"
    );
    for layer in &app.layer_blobs {
        assert!(
            pulled.contains(&format!("{}: Pull complete", &layer.hex()[..12])),
            "{pulled}"
        );
    }
    assert!(
        pulled.contains(&format!("Digest: {}\n", app.manifest)),
        "{pulled}"
    );
    assert!(
        pulled.contains(&format!(
            "Status: Downloaded newer image for {destination}\n"
        )),
        "{pulled}"
    );
    assert!(pulled.ends_with(&format!("{destination}\n")), "{pulled}");
    let id = ok_with(
        &fresh,
        config_dir.path(),
        &["inspect", "--format", "{{.Id}}", &destination],
    );
    assert_eq!(id.trim(), app.config.to_string());

    let repeat = ok_with(&fresh, config_dir.path(), &["pull", &destination]);
    assert!(repeat.contains("Already exists"), "{repeat}");
    assert!(
        repeat.contains(&format!("Status: Image is up to date for {destination}")),
        "{repeat}"
    );

    // A pulled image saves, as any other.
    let archive = fresh.work.path().join("pulled.tar");
    ok_with(
        &fresh,
        config_dir.path(),
        &["save", "-o", archive.to_str().expect("path"), &destination],
    );

    let missing = run_with(
        &fresh,
        config_dir.path(),
        &["pull", &format!("{}/team/nothing:v1", registry.host())],
        "",
    );
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("team/nothing"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn push_mounts_blobs_from_another_repository_of_the_same_image() {
    let Some(registry) = TestRegistry::start("") else {
        return;
    };
    let config_dir = tempfile::tempdir().expect("docker config dir");
    let kiln = Kiln::new();
    let app = make_image(kiln.root.path(), APP, &[&[("m.txt", "mount me\n")]]);
    let first = format!("{}/first/app:v1", registry.host());
    let second = format!("{}/second/app:v1", registry.host());
    kiln.ok(&["tag", "app", &first]);
    ok_with(&kiln, config_dir.path(), &["push", &first]);
    kiln.ok(&["tag", "app", &second]);
    let pushed = ok_with(&kiln, config_dir.path(), &["push", &second]);
    assert!(
        pushed.contains(&format!(
            "{}: Mounted from first/app",
            &app.layer_blobs[0].hex()[..12]
        )),
        "{pushed}"
    );
    assert!(
        registry.log_count("mount=") >= 1,
        "the registry saw a mount request"
    );
    if have("skopeo") {
        assert_eq!(skopeo_digest(&second), app.manifest.to_string());
    }
}

#[test]
fn pull_picks_the_requested_platform_from_an_index() {
    if !have_or_skip("skopeo") {
        return;
    }
    let Some(registry) = TestRegistry::start("") else {
        return;
    };
    let config_dir = tempfile::tempdir().expect("docker config dir");
    let kiln = Kiln::new();
    let amd64 = make_image(
        kiln.root.path(),
        "docker.io/library/multi:amd64",
        &[&[("arch", "amd64\n")]],
    );
    let arm64 = make_image(
        kiln.root.path(),
        "docker.io/library/multi:arm64",
        &[&[("arch", "arm64\n")]],
    );
    // kiln's archive is an OCI layout: unpack it, add an index of both images, push that.
    let destination = format!("{}/multi:v1", registry.host());
    let index_digest = push_amd64_arm64_index(&kiln, &amd64, &arm64, &destination);

    let fresh = Kiln::new();
    let pulled = ok_with(
        &fresh,
        config_dir.path(),
        &["pull", "--platform", "linux/arm64", &destination],
    );
    assert!(
        pulled.contains(&format!("Digest: {index_digest}")),
        "the index digest: {pulled}"
    );
    let id = ok_with(
        &fresh,
        config_dir.path(),
        &["inspect", "--format", "{{.Id}}", &destination],
    );
    assert_eq!(id.trim(), arm64.config.to_string());

    let other = Kiln::new();
    ok_with(
        &other,
        config_dir.path(),
        &["pull", "--platform", "linux/amd64", &destination],
    );
    let id = ok_with(
        &other,
        config_dir.path(),
        &["inspect", "--format", "{{.Id}}", &destination],
    );
    assert_eq!(id.trim(), amd64.config.to_string());

    let none = run_with(
        &other,
        config_dir.path(),
        &["pull", "--platform", "linux/s390x", &destination],
        "",
    );
    assert!(!none.status.success());
    assert!(stderr(&none).contains("s390x"), "{}", stderr(&none));
}

#[test]
fn login_stores_checked_credentials_and_logout_removes_them() {
    let Some(registry) = TestRegistry::start_with_password("alice", "right-pw") else {
        return;
    };
    let config_dir = tempfile::tempdir().expect("docker config dir");
    let config_file = config_dir.path().join("config.json");
    let kiln = Kiln::new();
    make_image(kiln.root.path(), APP, &[&[("secret.txt", "s\n")]]);
    let destination = format!("{}/private/app:v1", registry.host());
    let host = registry.host();

    let anonymous = run_with(&kiln, config_dir.path(), &["push", "app", &destination], "");
    assert!(
        !anonymous.status.success(),
        "push without credentials is refused"
    );

    let wrong = run_with(
        &kiln,
        config_dir.path(),
        &["login", "-u", "alice", "--password-stdin", &host],
        "wrong-pw\n",
    );
    assert!(
        !wrong.status.success(),
        "a wrong password fails: {}",
        stdout(&wrong)
    );
    assert!(stderr(&wrong).contains(&host), "{}", stderr(&wrong));
    assert!(!config_file.exists(), "nothing stored after a failed login");

    let login = run_with(
        &kiln,
        config_dir.path(),
        &["login", "-u", "alice", "--password-stdin", &host],
        "right-pw\n",
    );
    assert!(login.status.success(), "login failed: {}", stderr(&login));
    assert_eq!(stdout(&login), "Login Succeeded\n");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_file).expect("config.json written"))
            .expect("config JSON");
    assert_eq!(
        config["auths"][&host]["auth"], "YWxpY2U6cmlnaHQtcHc=",
        "base64 of alice:right-pw, as docker login writes it"
    );

    ok_with(&kiln, config_dir.path(), &["push", "app", &destination]);
    let fresh = Kiln::new();
    ok_with(&fresh, config_dir.path(), &["pull", &destination]);

    let logout = ok_with(&kiln, config_dir.path(), &["logout", &host]);
    assert_eq!(logout, format!("Removing login credentials for {host}\n"));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_file).expect("config.json"))
            .expect("config JSON");
    assert!(config["auths"].get(&host).is_none(), "{config}");
    let again = ok_with(&kiln, config_dir.path(), &["logout", &host]);
    assert_eq!(again, format!("Not logged in to {host}\n"));

    let after = Kiln::new();
    let refused = run_with(&after, config_dir.path(), &["pull", &destination], "");
    assert!(!refused.status.success(), "pull after logout is refused");
}

#[test]
fn push_all_tags_pushes_every_local_tag_of_the_repository() {
    let Some(registry) = TestRegistry::start("") else {
        return;
    };
    let config_dir = tempfile::tempdir().expect("docker config dir");
    let kiln = Kiln::new();
    let one = make_image(kiln.root.path(), APP, &[&[("one", "1\n")]]);
    let two = make_image(
        kiln.root.path(),
        "docker.io/library/two:latest",
        &[&[("two", "2\n")]],
    );
    let repository = format!("{}/many", registry.host());
    kiln.ok(&["tag", "app", &format!("{repository}:one")]);
    kiln.ok(&["tag", "two", &format!("{repository}:two")]);
    let pushed = ok_with(
        &kiln,
        config_dir.path(),
        &["push", "--all-tags", &repository],
    );
    assert_eq!(
        pushed.matches("The push refers to repository").count(),
        1,
        "{pushed}"
    );
    assert!(
        pushed.contains(&format!("one: digest: {}", one.manifest)),
        "{pushed}"
    );
    assert!(
        pushed.contains(&format!("two: digest: {}", two.manifest)),
        "{pushed}"
    );
    if have("skopeo") {
        assert_eq!(
            skopeo_digest(&format!("{repository}:one")),
            one.manifest.to_string()
        );
        assert_eq!(
            skopeo_digest(&format!("{repository}:two")),
            two.manifest.to_string()
        );
    }
    let tagged = run_with(
        &kiln,
        config_dir.path(),
        &["push", "--all-tags", &format!("{repository}:one")],
        "",
    );
    assert!(
        !tagged.status.success(),
        "--all-tags takes a repository without a tag"
    );
}

//! The credential-helper protocol against a real helper program. Its own test binary, because it
//! changes PATH for the process.

use std::path::Path;

use kiln_registry::credentials::DockerConfig;

fn config_with(dir: &Path, json: &str) -> DockerConfig {
    let path = dir.join("config.json");
    std::fs::write(&path, json).unwrap();
    DockerConfig::load(&path).unwrap()
}

#[test]
fn credential_helper_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let helper = bin.join("docker-credential-kilntest");
    std::fs::write(
        &helper,
        "#!/bin/sh\nread server\nif [ \"$1\" = get ] && [ \"$server\" = helped.example ]; then\n  echo '{\"Username\":\"dave\",\"Secret\":\"hunter2\"}'\nelse\n  echo 'credentials not found in native keychain'; exit 1\nfi\n",
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = std::env::var("PATH").unwrap_or_default();
    // SAFETY: the only test in this binary, so no other thread reads the environment.
    unsafe { std::env::set_var("PATH", format!("{}:{path}", bin.display())) };
    let config = config_with(
        dir.path(),
        r#"{"credHelpers":{"helped.example":"kilntest"}}"#,
    );
    let creds = config.credentials_for("helped.example").unwrap().unwrap();
    assert_eq!(creds.username, "dave");
    assert_eq!(creds.secret, "hunter2");
    let config = config_with(dir.path(), r#"{"credsStore":"kilntest"}"#);
    assert_eq!(config.credentials_for("elsewhere.example").unwrap(), None);
}

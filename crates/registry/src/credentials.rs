//! Registry credentials from Docker's client configuration (`$DOCKER_CONFIG/config.json`, default
//! `~/.docker/config.json`): inline `auths`, a default `credsStore` and per-registry `credHelpers`
//! (`docker-credential-<name>` programs). `kiln login` writes the same file, so credentials move
//! freely between docker and kiln.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};

/// A user name and secret (a password or an identity token).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    // Never print the secret, even in debug logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the auth entry for {registry} in {path} is not valid base64 of user:password")]
    BadAuthEntry { registry: String, path: PathBuf },
    #[error("credential helper docker-credential-{helper} failed for {registry}: {message}")]
    Helper {
        helper: String,
        registry: String,
        message: String,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Docker's client configuration file, read as JSON so that fields kiln does not know survive a
/// `kiln login` rewrite.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    path: PathBuf,
    document: Map<String, Value>,
}

/// The key Docker Hub's credentials are stored under, for historical reasons.
const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// The config-file key for a registry host: Docker Hub keeps its legacy URL.
pub fn config_key(registry: &str) -> String {
    match registry {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB_AUTH_KEY.to_string(),
        other => other.to_string(),
    }
}

/// Strips a scheme and path so `https://host:5000/v2/` and `host:5000` compare equal, as Docker does
/// when it looks up `auths`.
fn normalize_key(key: &str) -> String {
    if key == DOCKER_HUB_AUTH_KEY {
        return key.to_string();
    }
    let without_scheme = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    without_scheme
        .split('/')
        .next()
        .unwrap_or(without_scheme)
        .to_string()
}

impl DockerConfig {
    /// The config path: `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
    pub fn default_path() -> PathBuf {
        if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
            return PathBuf::from(dir).join("config.json");
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"));
        home.join(".docker").join("config.json")
    }

    /// Loads the file; a missing file is an empty configuration.
    ///
    /// # Errors
    /// An unreadable file or invalid JSON.
    pub fn load(path: &Path) -> Result<DockerConfig, CredentialsError> {
        let document = match std::fs::read(path) {
            Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Map::new(),
            Ok(bytes) => {
                serde_json::from_slice::<Map<String, Value>>(&bytes).map_err(|source| {
                    CredentialsError::Parse {
                        path: path.to_path_buf(),
                        source,
                    }
                })?
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Map::new(),
            Err(source) => {
                return Err(CredentialsError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Ok(DockerConfig {
            path: path.to_path_buf(),
            document,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn helper_for(&self, registry: &str) -> Option<String> {
        let key = config_key(registry);
        let per_registry = self
            .document
            .get("credHelpers")
            .and_then(Value::as_object)
            .and_then(|helpers| {
                helpers
                    .iter()
                    .find(|(k, _)| normalize_key(k) == normalize_key(&key))
                    .and_then(|(_, v)| v.as_str())
            });
        per_registry
            .or_else(|| self.document.get("credsStore").and_then(Value::as_str))
            .filter(|name| !name.is_empty())
            .map(str::to_string)
    }

    /// The credentials for `registry` (a host like `localhost:5000` or `docker.io`), or `None` when
    /// the configuration has none (anonymous access).
    ///
    /// # Errors
    /// A malformed `auth` entry, or a credential helper that fails for another reason than "no
    /// credentials".
    pub fn credentials_for(&self, registry: &str) -> Result<Option<Credentials>, CredentialsError> {
        if let Some(helper) = self.helper_for(registry) {
            return run_helper_get(&helper, &config_key(registry));
        }
        let key = normalize_key(&config_key(registry));
        let Some(auths) = self.document.get("auths").and_then(Value::as_object) else {
            return Ok(None);
        };
        let Some(entry) = auths
            .iter()
            .find(|(k, _)| normalize_key(k) == key)
            .map(|(_, v)| v)
        else {
            return Ok(None);
        };
        if let Some(token) = entry
            .get("identitytoken")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            return Ok(Some(Credentials {
                username: "<token>".to_string(),
                secret: token.to_string(),
            }));
        }
        let bad = || CredentialsError::BadAuthEntry {
            registry: registry.to_string(),
            path: self.path.clone(),
        };
        if let Some(auth) = entry
            .get("auth")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        {
            let decoded = BASE64.decode(auth.trim()).map_err(|_| bad())?;
            let text = String::from_utf8(decoded).map_err(|_| bad())?;
            let (username, secret) = text.split_once(':').ok_or_else(bad)?;
            return Ok(Some(Credentials {
                username: username.to_string(),
                secret: secret.to_string(),
            }));
        }
        match (
            entry.get("username").and_then(Value::as_str),
            entry.get("password").and_then(Value::as_str),
        ) {
            (Some(username), Some(password)) => Ok(Some(Credentials {
                username: username.to_string(),
                secret: password.to_string(),
            })),
            _ => Ok(None),
        }
    }

    /// Stores credentials: through the configured helper when there is one, otherwise inline in
    /// `auths` (as `docker login` does without a helper). The file is rewritten atomically.
    ///
    /// # Errors
    /// The helper fails, or the file cannot be written.
    pub fn store_credentials(
        &mut self,
        registry: &str,
        credentials: &Credentials,
    ) -> Result<(), CredentialsError> {
        let key = config_key(registry);
        if let Some(helper) = self.helper_for(registry) {
            let input = serde_json::json!({
                "ServerURL": key,
                "Username": credentials.username,
                "Secret": credentials.secret,
            });
            run_helper(&helper, "store", &input.to_string(), registry)?;
            // Docker records an empty entry so `docker logout` and listings know about it.
            self.auths_mut().insert(key, Value::Object(Map::new()));
        } else {
            let auth = BASE64.encode(format!("{}:{}", credentials.username, credentials.secret));
            let mut entry = Map::new();
            entry.insert("auth".to_string(), Value::String(auth));
            self.auths_mut().insert(key, Value::Object(entry));
        }
        self.save()
    }

    /// Forgets the credentials for `registry`. Returns whether there were any.
    ///
    /// # Errors
    /// The helper fails, or the file cannot be written.
    pub fn erase_credentials(&mut self, registry: &str) -> Result<bool, CredentialsError> {
        let key = config_key(registry);
        if let Some(helper) = self.helper_for(registry) {
            run_helper(&helper, "erase", &key, registry)?;
        }
        let removed = {
            let auths = self.auths_mut();
            let found: Vec<String> = auths
                .keys()
                .filter(|k| normalize_key(k) == normalize_key(&key))
                .cloned()
                .collect();
            for k in &found {
                auths.remove(k);
            }
            !found.is_empty()
        };
        self.save()?;
        Ok(removed)
    }

    fn auths_mut(&mut self) -> &mut Map<String, Value> {
        let auths = self
            .document
            .entry("auths")
            .or_insert_with(|| Value::Object(Map::new()));
        if !auths.is_object() {
            *auths = Value::Object(Map::new());
        }
        match auths {
            Value::Object(map) => map,
            _ => unreachable!("auths was just made an object"),
        }
    }

    fn save(&self) -> Result<(), CredentialsError> {
        let write_error = |source| CredentialsError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(write_error)?;
        let text =
            serde_json::to_string_pretty(&self.document).map_err(|e| write_error(e.into()))?;
        let mut temp = tempfile_in(dir).map_err(write_error)?;
        temp.1.write_all(text.as_bytes()).map_err(write_error)?;
        temp.1.write_all(b"\n").map_err(write_error)?;
        temp.1.sync_all().map_err(write_error)?;
        // The file holds secrets: owner-only, like docker's.
        std::fs::set_permissions(&temp.0, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(write_error)?;
        std::fs::rename(&temp.0, &self.path).map_err(write_error)?;
        Ok(())
    }
}

/// Creates a uniquely named file in `dir` for an atomic rewrite.
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    for attempt in 0..100u32 {
        let path = dir.join(format!(".config.json.{}.{attempt}.tmp", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("could not create a temporary file"))
}

fn run_helper(
    helper: &str,
    action: &str,
    input: &str,
    registry: &str,
) -> Result<String, CredentialsError> {
    let program = format!("docker-credential-{helper}");
    let failed = |message: String| CredentialsError::Helper {
        helper: helper.to_string(),
        registry: registry.to_string(),
        message,
    };
    let mut child = Command::new(&program)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot run {program}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| failed(format!("writing to {program}: {e}")))?;
    }
    let output = child
        .wait_with_output()
        .map_err(|e| failed(format!("waiting for {program}: {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if output.status.success() {
        Ok(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        Err(failed(if stdout.is_empty() { stderr } else { stdout }))
    }
}

fn run_helper_get(helper: &str, server: &str) -> Result<Option<Credentials>, CredentialsError> {
    match run_helper(helper, "get", server, server) {
        Ok(text) => {
            let value: Value =
                serde_json::from_str(&text).map_err(|e| CredentialsError::Helper {
                    helper: helper.to_string(),
                    registry: server.to_string(),
                    message: format!("invalid JSON answer: {e}"),
                })?;
            let username = value
                .get("Username")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let secret = value
                .get("Secret")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if secret.is_empty() {
                Ok(None)
            } else {
                Ok(Some(Credentials {
                    username: username.to_string(),
                    secret: secret.to_string(),
                }))
            }
        }
        // The protocol's way of saying "nothing stored": anonymous access, not an error.
        Err(CredentialsError::Helper { message, .. })
            if message.contains("credentials not found") =>
        {
            Ok(None)
        }
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_with(dir: &Path, json: &str) -> DockerConfig {
        let path = dir.join("config.json");
        std::fs::write(&path, json).unwrap();
        DockerConfig::load(&path).unwrap()
    }

    #[test]
    fn inline_auth_is_decoded_and_matched_by_host() {
        let dir = tempfile::tempdir().unwrap();
        let auth = BASE64.encode("alice:s3cret");
        let config = config_with(
            dir.path(),
            &format!(r#"{{"auths":{{"https://localhost:5000/v2/":{{"auth":"{auth}"}}}}}}"#),
        );
        let creds = config.credentials_for("localhost:5000").unwrap().unwrap();
        assert_eq!(creds.username, "alice");
        assert_eq!(creds.secret, "s3cret");
        assert_eq!(config.credentials_for("other:5000").unwrap(), None);
    }

    #[test]
    fn docker_hub_uses_its_legacy_key() {
        let dir = tempfile::tempdir().unwrap();
        let auth = BASE64.encode("bob:pw");
        let config = config_with(
            dir.path(),
            &format!(r#"{{"auths":{{"https://index.docker.io/v1/":{{"auth":"{auth}"}}}}}}"#),
        );
        assert_eq!(
            config
                .credentials_for("docker.io")
                .unwrap()
                .unwrap()
                .username,
            "bob"
        );
    }

    #[test]
    fn missing_file_means_anonymous_and_bad_auth_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let config = DockerConfig::load(&dir.path().join("absent.json")).unwrap();
        assert_eq!(config.credentials_for("localhost:5000").unwrap(), None);
        let config = config_with(dir.path(), r#"{"auths":{"r.example":{"auth":"!!!"}}}"#);
        assert!(matches!(
            config.credentials_for("r.example"),
            Err(CredentialsError::BadAuthEntry { .. })
        ));
    }

    #[test]
    fn store_then_erase_round_trips_and_keeps_unknown_fields() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = config_with(dir.path(), r#"{"psFormat":"table","auths":{}}"#);
        let creds = Credentials {
            username: "carol".into(),
            secret: "pw:with:colons".into(),
        };
        config.store_credentials("localhost:5000", &creds).unwrap();
        let reread = DockerConfig::load(config.path()).unwrap();
        assert_eq!(
            reread.credentials_for("localhost:5000").unwrap(),
            Some(creds)
        );
        assert_eq!(
            reread.document.get("psFormat").and_then(Value::as_str),
            Some("table")
        );
        let mode = std::fs::metadata(config.path()).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let mut reread = reread;
        assert!(reread.erase_credentials("localhost:5000").unwrap());
        assert_eq!(
            DockerConfig::load(config.path())
                .unwrap()
                .credentials_for("localhost:5000")
                .unwrap(),
            None
        );
    }
}

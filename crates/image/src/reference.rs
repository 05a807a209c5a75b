//! Image references with Docker's rules: `docker.io` and `library/` defaults, tags, digests, ports.
//!
//! [`Reference::parse`] follows docker/distribution's `ParseNormalizedNamed`: the first path
//! component is a registry only when it contains `.` or `:`, is `localhost`, or has uppercase
//! letters; otherwise the registry is `docker.io` and a single-component name gets `library/`.
//! `index.docker.io` is the legacy name of `docker.io`. Repository paths are lowercase components
//! (`[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`) separated by `/`; the whole name is at most
//! 255 characters; tags are `[\w][\w.-]{0,127}`; a reference may carry both a tag and a digest
//! (`name:tag@sha256:…`), and the digest is then what identifies the content.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::digest::{Digest, DigestError};

/// Docker Hub's name in references.
pub const DOCKER_HUB: &str = "docker.io";
/// The legacy name of Docker Hub, normalised to [`DOCKER_HUB`].
pub const LEGACY_DOCKER_HUB: &str = "index.docker.io";
/// The host that serves Docker Hub's registry API.
pub const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
/// The namespace of official images on Docker Hub.
pub const OFFICIAL_NAMESPACE: &str = "library";
/// The tag used when a reference names neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";
/// The longest allowed name (registry, `/` and repository).
pub const NAME_MAX_LENGTH: usize = 255;
/// The longest allowed tag.
pub const TAG_MAX_LENGTH: usize = 128;

/// A parsed, normalised image reference.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Reference {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// Why a reference was rejected. Every variant names the offending text.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("invalid reference format: repository name must have at least one component")]
    Empty,
    #[error(
        "invalid reference format: repository name ({repository}) must be lowercase (in {reference:?})"
    )]
    Uppercase {
        reference: String,
        repository: String,
    },
    #[error("invalid repository name ({0}), cannot specify 64-byte hexadecimal strings")]
    HexIdentifier(String),
    #[error("invalid reference format {reference:?}: {reason}")]
    InvalidFormat { reference: String, reason: String },
    #[error(
        "invalid reference format {reference:?}: repository name must not be more than {NAME_MAX_LENGTH} characters (it has {length})"
    )]
    NameTooLong { reference: String, length: usize },
    #[error(
        "invalid tag {0:?}: a tag is up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'"
    )]
    InvalidTag(String),
    #[error("invalid digest in reference {reference:?}: {source}")]
    InvalidDigest {
        reference: String,
        #[source]
        source: DigestError,
    },
}

impl Reference {
    /// Parses and normalises a reference as `docker pull` does (`busybox` →
    /// `docker.io/library/busybox`). No default tag is added; see [`Reference::with_default_tag`].
    ///
    /// # Errors
    /// [`ReferenceError`] when the text is not a valid reference: empty, a bare 64-hex identifier,
    /// uppercase letters in the repository, a malformed registry, path, tag or digest, or a name
    /// longer than 255 characters.
    pub fn parse(text: &str) -> Result<Reference, ReferenceError> {
        if text.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            // Ambiguous with an image ID, so Docker refuses it as a name.
            return Err(ReferenceError::HexIdentifier(text.to_string()));
        }
        let invalid = |reason: String| ReferenceError::InvalidFormat {
            reference: text.to_string(),
            reason,
        };

        // Neither names nor tags may contain '@', so the first one starts the digest.
        let (name_and_tag, digest) = match text.split_once('@') {
            Some((before, digest_text)) => {
                let digest = digest_text.parse::<Digest>().map_err(|source| {
                    ReferenceError::InvalidDigest {
                        reference: text.to_string(),
                        source,
                    }
                })?;
                (before, Some(digest))
            }
            None => (text, None),
        };
        // A ':' after the last '/' starts the tag; an earlier one belongs to the registry's port.
        let last_slash = name_and_tag.rfind('/');
        let (name, tag) = match name_and_tag.rfind(':') {
            Some(colon) if last_slash.is_none_or(|slash| colon > slash) => {
                (&name_and_tag[..colon], Some(&name_and_tag[colon + 1..]))
            }
            _ => (name_and_tag, None),
        };
        if let Some(tag) = tag {
            if !is_valid_tag(tag) {
                return Err(ReferenceError::InvalidTag(tag.to_string()));
            }
        }

        let (mut registry, mut repository) = match name.split_once('/') {
            Some((first, rest)) if looks_like_registry(first) => {
                (first.to_string(), rest.to_string())
            }
            _ => (DOCKER_HUB.to_string(), name.to_string()),
        };
        if registry == LEGACY_DOCKER_HUB {
            registry = DOCKER_HUB.to_string();
        }
        if registry == DOCKER_HUB && !repository.contains('/') {
            repository = format!("{OFFICIAL_NAMESPACE}/{repository}");
        }

        if repository.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if repository.chars().any(|c| c.is_ascii_uppercase()) {
            // Checked before the grammar so that the message says what to fix.
            let lowered = repository.to_ascii_lowercase();
            if lowered.split('/').all(is_valid_path_component) {
                return Err(ReferenceError::Uppercase {
                    reference: text.to_string(),
                    repository,
                });
            }
        }
        if let Some(component) = repository
            .split('/')
            .find(|component| !is_valid_path_component(component))
        {
            return Err(invalid(if component.is_empty() {
                "empty path component (a doubled or trailing '/')".to_string()
            } else {
                format!(
                    "bad path component {component:?}: use lowercase letters and digits, \
                     separated by '.', '_', '__' or '-'"
                )
            }));
        }
        validate_registry(&registry).map_err(invalid)?;
        let length = registry.len() + 1 + repository.len();
        if length > NAME_MAX_LENGTH {
            return Err(ReferenceError::NameTooLong {
                reference: text.to_string(),
                length,
            });
        }
        Ok(Reference {
            registry,
            repository,
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// The registry as written in references (`docker.io`, `localhost:5000`, `[::1]:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path on its registry (`library/busybox`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The tag, or `latest` when there is none.
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or(DEFAULT_TAG)
    }

    /// What to ask the registry for: the digest when there is one (it pins the content even if a
    /// tag is also given), else the tag, else `latest`.
    pub fn tag_or_digest(&self) -> String {
        match &self.digest {
            Some(digest) => digest.to_string(),
            None => self.tag_or_latest().to_string(),
        }
    }

    /// The reference with `latest` added when it has neither tag nor digest (Docker's
    /// `TagNameOnly`), as `docker pull busybox` and `docker build -t busybox` do.
    pub fn with_default_tag(mut self) -> Reference {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some(DEFAULT_TAG.to_string());
        }
        self
    }

    /// The same repository with another tag (the digest is dropped: it would pin other content).
    ///
    /// # Errors
    /// [`ReferenceError::InvalidTag`] when `tag` does not match `[\w][\w.-]{0,127}`.
    pub fn with_tag(&self, tag: &str) -> Result<Reference, ReferenceError> {
        if !is_valid_tag(tag) {
            return Err(ReferenceError::InvalidTag(tag.to_string()));
        }
        Ok(Reference {
            tag: Some(tag.to_string()),
            digest: None,
            ..self.name_only()
        })
    }

    /// The same repository and tag pinned to `digest`.
    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            digest: Some(digest),
            ..self.clone()
        }
    }

    /// The repository alone, without tag or digest.
    pub fn name_only(&self) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: None,
        }
    }

    /// `registry/repository` (`docker.io/library/busybox`).
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The short name Docker shows: `busybox` for `docker.io/library/busybox`, `user/app` for
    /// `docker.io/user/app`, the full name elsewhere.
    pub fn familiar_name(&self) -> String {
        if self.registry != DOCKER_HUB {
            return self.name();
        }
        match self.repository.strip_prefix("library/") {
            Some(rest) if !rest.contains('/') => rest.to_string(),
            _ => self.repository.clone(),
        }
    }

    /// The short form with tag and digest (`busybox:latest`).
    pub fn familiar(&self) -> String {
        let mut out = self.familiar_name();
        self.push_tag_and_digest(&mut out);
        out
    }

    /// The host (and port) serving the registry API: `registry-1.docker.io` for Docker Hub, the
    /// registry itself otherwise.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    /// Whether the registry is on this machine (`localhost`, `127.0.0.0/8`, `::1`, with any
    /// port): such registries are spoken to over plain HTTP.
    pub fn is_loopback_registry(&self) -> bool {
        is_loopback_host(registry_host(&self.registry))
    }

    fn push_tag_and_digest(&self, out: &mut String) {
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(&digest.to_string());
        }
    }
}

/// The host part of a registry (`localhost` of `localhost:5000`, `::1` of `[::1]:5000`).
fn registry_host(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(host, _)| host);
    }
    registry.split_once(':').map_or(registry, |(host, _)| host)
}

fn is_loopback_host(host: &str) -> bool {
    if host.eq_ignore_ascii_case("localhost") {
        return true;
    }
    if let Ok(v4) = host.parse::<Ipv4Addr>() {
        return v4.is_loopback();
    }
    host.parse::<std::net::Ipv6Addr>()
        .is_ok_and(|v6| v6.is_loopback())
}

/// Docker's rule for telling `registry/repo` from `namespace/repo`.
fn looks_like_registry(first_component: &str) -> bool {
    first_component.contains(['.', ':'])
        || first_component == "localhost"
        || first_component.chars().any(|c| c.is_ascii_uppercase())
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or one or more `-`.
fn is_valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if is_alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let ok = matches!(separator, "." | "_" | "__") || separator.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}`.
fn is_valid_tag(tag: &str) -> bool {
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= TAG_MAX_LENGTH
        && is_word(bytes[0])
        && bytes[1..]
            .iter()
            .all(|&b| is_word(b) || b == b'.' || b == b'-')
}

/// A host (DNS name of `[A-Za-z0-9]` labels with inner `-`, or a bracketed IPv6 address) and an
/// optional numeric port.
fn validate_registry(registry: &str) -> Result<(), String> {
    let bad = |why: &str| format!("bad registry {registry:?}: {why}");
    let (host_ok, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (address, after) = rest
            .split_once(']')
            .ok_or_else(|| bad("missing ']' after the IPv6 address"))?;
        let ok = !address.is_empty() && address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| bad("expected ':port' after ']'"))?,
            ),
        };
        (ok, port)
    } else {
        let (host, port) = match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        };
        let label_ok = |label: &str| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
        };
        (host.split('.').all(label_ok), port)
    };
    if !host_ok {
        return Err(bad("not a valid host name or [IPv6] address"));
    }
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("the port must be a number"));
        }
    }
    Ok(())
}

impl fmt::Display for Reference {
    /// The full form: `docker.io/library/busybox:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.name();
        self.push_tag_and_digest(&mut out);
        f.write_str(&out)
    }
}

impl fmt::Debug for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reference({self})")
    }
}

impl FromStr for Reference {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

impl Serialize for Reference {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Reference {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c";

    fn parse(text: &str) -> Reference {
        Reference::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
    }

    /// distribution's `TestValidateReferenceName` and `TestValidateRemoteName`.
    #[test]
    fn valid_and_invalid_names() {
        let valid = [
            "docker/docker",
            "library/debian",
            "debian",
            "docker.io/docker/docker",
            "docker.io/library/debian",
            "docker.io/debian",
            "index.docker.io/docker/docker",
            "index.docker.io/library/debian",
            "index.docker.io/debian",
            "127.0.0.1:5000/docker/docker",
            "127.0.0.1:5000/library/debian",
            "127.0.0.1:5000/debian",
            "192.168.0.1",
            "192.168.0.1:80",
            "192.168.0.1:8/debian",
            "192.168.0.2:25000/debian",
            "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
            "[fc00::1]:5000/docker",
            "[fc00::1]:5000/docker/docker",
            "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
            "docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
            "Docker/docker",
            "DOCKER/docker",
            "docker-rules/docker",
            "docker---rules/docker",
            "doc/docker",
            "d/docker",
            "jess/t",
            "dock__er/docker",
            "localhost/app",
            "localhost:5000/app:1.0",
        ];
        for name in valid {
            assert!(Reference::parse(name).is_ok(), "{name} should be valid");
        }
        let invalid = [
            "",
            "https://github.com/docker/docker",
            "docker/Docker",
            "-docker",
            "-docker/docker",
            "-docker.io/docker/docker",
            "docker///docker",
            "docker.io/docker/Docker",
            "docker.io/docker///docker",
            "[fc00::1]",
            "[fc00::1]:5000",
            "fc00::1:5000/debian",
            "[fe80::1%eth0]:5000/debian",
            "[2001:db8:3:4::192.0.2.33]:5000/debian",
            "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
            "docker-/docker",
            "-docker-/docker",
            "____/____",
            "_docker/_docker",
            "dock..er/docker",
            "dock_.er/docker",
            "dock-.er/docker",
            "docker/",
            "this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255_this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255/docker",
            "busybox:-tag",
            "busybox:",
            "busybox:latest@",
            "busybox@sha256:abc",
            "a:b:c",
            "localhost:port/app",
            "Busybox",
        ];
        for name in invalid {
            assert!(
                Reference::parse(name).is_err(),
                "{name:?} should be invalid"
            );
        }
    }

    /// distribution's `TestParseRepositoryInfo`: (familiar, full, ambiguous spellings, registry,
    /// repository).
    #[test]
    fn normalisation_table() {
        let cases: &[(&str, &str, &[&str], &str, &str)] = &[
            (
                "fooo/bar",
                "docker.io/fooo/bar",
                &["index.docker.io/fooo/bar"],
                "docker.io",
                "fooo/bar",
            ),
            (
                "ubuntu",
                "docker.io/library/ubuntu",
                &["library/ubuntu"],
                "docker.io",
                "library/ubuntu",
            ),
            (
                "nonlibrary/ubuntu",
                "docker.io/nonlibrary/ubuntu",
                &[],
                "docker.io",
                "nonlibrary/ubuntu",
            ),
            (
                "other/library",
                "docker.io/other/library",
                &[],
                "docker.io",
                "other/library",
            ),
            (
                "127.0.0.1:8000/private/moonbase",
                "127.0.0.1:8000/private/moonbase",
                &[],
                "127.0.0.1:8000",
                "private/moonbase",
            ),
            (
                "127.0.0.1:8000/privatebase",
                "127.0.0.1:8000/privatebase",
                &[],
                "127.0.0.1:8000",
                "privatebase",
            ),
            (
                "example.com/private/moonbase",
                "example.com/private/moonbase",
                &[],
                "example.com",
                "private/moonbase",
            ),
            (
                "example.com/privatebase",
                "example.com/privatebase",
                &[],
                "example.com",
                "privatebase",
            ),
            (
                "example.com:8000/private/moonbase",
                "example.com:8000/private/moonbase",
                &[],
                "example.com:8000",
                "private/moonbase",
            ),
            (
                "example.com:8000/privatebasee",
                "example.com:8000/privatebasee",
                &[],
                "example.com:8000",
                "privatebasee",
            ),
            (
                "ubuntu-12.04-base",
                "docker.io/library/ubuntu-12.04-base",
                &["index.docker.io/library/ubuntu-12.04-base"],
                "docker.io",
                "library/ubuntu-12.04-base",
            ),
            (
                "foo",
                "docker.io/library/foo",
                &["docker.io/foo"],
                "docker.io",
                "library/foo",
            ),
            (
                "library/foo/bar",
                "docker.io/library/foo/bar",
                &[],
                "docker.io",
                "library/foo/bar",
            ),
            (
                "store/foo/bar",
                "docker.io/store/foo/bar",
                &[],
                "docker.io",
                "store/foo/bar",
            ),
            ("Foo/bar", "Foo/bar", &[], "Foo", "bar"),
            ("FOO/bar", "FOO/bar", &[], "FOO", "bar"),
            ("test.com/foo", "test.com/foo", &[], "test.com", "foo"),
            (
                "test_com/foo",
                "docker.io/test_com/foo",
                &[],
                "docker.io",
                "test_com/foo",
            ),
            (
                "docker/migrator",
                "docker.io/docker/migrator",
                &[],
                "docker.io",
                "docker/migrator",
            ),
            (
                "test.com:8080/foo",
                "test.com:8080/foo",
                &[],
                "test.com:8080",
                "foo",
            ),
            (
                "test-com:8080/foo",
                "test-com:8080/foo",
                &[],
                "test-com:8080",
                "foo",
            ),
            (
                "xn--n3h.com/foo",
                "xn--n3h.com/foo",
                &[],
                "xn--n3h.com",
                "foo",
            ),
            (
                "xn--n3h.com:18080/foo",
                "xn--n3h.com:18080/foo",
                &[],
                "xn--n3h.com:18080",
                "foo",
            ),
            ("localhost/foo", "localhost/foo", &[], "localhost", "foo"),
            ("[::1]:5000/foo", "[::1]:5000/foo", &[], "[::1]:5000", "foo"),
        ];
        for &(familiar, full, ambiguous, registry, repository) in cases {
            for spelling in [familiar, full].iter().chain(ambiguous) {
                let reference = parse(spelling);
                assert_eq!(
                    reference.familiar_name(),
                    familiar,
                    "familiar name of {spelling}"
                );
                assert_eq!(reference.to_string(), full, "full name of {spelling}");
                assert_eq!(reference.registry(), registry, "registry of {spelling}");
                assert_eq!(
                    reference.repository(),
                    repository,
                    "repository of {spelling}"
                );
                assert_eq!(reference.tag(), None);
            }
        }
    }

    /// distribution's `TestParseAnyReference` (named cases) plus tags, digests and ports.
    #[test]
    fn tags_and_digests() {
        let cases = [
            ("redis", "docker.io/library/redis", None, false),
            (
                "redis:latest",
                "docker.io/library/redis:latest",
                Some("latest"),
                false,
            ),
            (
                "docker.io/library/redis:latest",
                "docker.io/library/redis:latest",
                Some("latest"),
                false,
            ),
            (
                &format!("redis@sha256:{HEX}") as &str,
                &format!("docker.io/library/redis@sha256:{HEX}") as &str,
                None,
                true,
            ),
            (
                "dmcgowan/myapp:latest",
                "docker.io/dmcgowan/myapp:latest",
                Some("latest"),
                false,
            ),
            (
                &format!("dmcgowan/myapp@sha256:{HEX}"),
                &format!("docker.io/dmcgowan/myapp@sha256:{HEX}"),
                None,
                true,
            ),
            (
                &HEX[..63],
                &format!("docker.io/library/{}", &HEX[..63]),
                None,
                false,
            ),
            ("dbcc1", "docker.io/library/dbcc1", None, false),
            (
                "localhost:5000/app:v1.2_3-x",
                "localhost:5000/app:v1.2_3-x",
                Some("v1.2_3-x"),
                false,
            ),
            ("localhost:5000/app", "localhost:5000/app", None, false),
            (
                "192.168.0.1:80",
                "docker.io/library/192.168.0.1:80",
                Some("80"),
                false,
            ),
            (
                &format!("busybox:1.36@sha256:{HEX}"),
                &format!("docker.io/library/busybox:1.36@sha256:{HEX}"),
                Some("1.36"),
                true,
            ),
            (
                &format!("[::1]:5000/a/b:t@sha256:{HEX}"),
                &format!("[::1]:5000/a/b:t@sha256:{HEX}"),
                Some("t"),
                true,
            ),
        ];
        for (input, full, tag, has_digest) in cases {
            let reference = parse(input);
            assert_eq!(reference.to_string(), full, "{input}");
            assert_eq!(reference.tag(), tag, "{input}");
            assert_eq!(reference.digest().is_some(), has_digest, "{input}");
            // The full form parses back to the same reference.
            assert_eq!(parse(&reference.to_string()), reference);
        }
    }

    #[test]
    fn familiar_form_keeps_tag_and_digest() {
        let short = format!("busybox:latest@sha256:{HEX}");
        let reference = parse(&short);
        assert_eq!(reference.to_string(), format!("docker.io/library/{short}"));
        assert_eq!(reference.familiar(), short);
        assert_eq!(
            parse("docker.io/library/busybox:latest").familiar(),
            "busybox:latest"
        );
        assert_eq!(parse("user/app:1").familiar(), "user/app:1");
        assert_eq!(parse("ghcr.io/o/app:1").familiar(), "ghcr.io/o/app:1");
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = Reference::parse("docker.io/Library/Busybox").unwrap_err();
        assert_eq!(
            err,
            ReferenceError::Uppercase {
                reference: "docker.io/Library/Busybox".into(),
                repository: "Library/Busybox".into()
            }
        );
        assert!(err.to_string().contains("must be lowercase"), "{err}");
        assert!(matches!(Reference::parse(""), Err(ReferenceError::Empty)));
        assert!(matches!(
            Reference::parse(&"a".repeat(64)),
            Err(ReferenceError::HexIdentifier(_))
        ));
        assert!(matches!(
            Reference::parse("busybox:.x"),
            Err(ReferenceError::InvalidTag(_))
        ));
        assert!(matches!(
            Reference::parse(&format!("busybox:{}", "t".repeat(129))),
            Err(ReferenceError::InvalidTag(_))
        ));
        assert!(Reference::parse(&format!("busybox:{}", "t".repeat(128))).is_ok());
        assert!(matches!(
            Reference::parse("busybox@md5:abc"),
            Err(ReferenceError::InvalidDigest { .. })
        ));
        let err = Reference::parse("localhost:x/app").unwrap_err();
        assert!(err.to_string().contains("port must be a number"), "{err}");
        let err = Reference::parse("a//b").unwrap_err();
        assert!(err.to_string().contains("empty path component"), "{err}");
        let long = format!("example.com/{}", "a".repeat(244));
        assert!(matches!(
            Reference::parse(&long),
            Err(ReferenceError::NameTooLong { length: 256, .. })
        ));
        assert!(Reference::parse(&format!("example.com/{}", "a".repeat(243))).is_ok());
    }

    #[test]
    fn default_tag_helpers() {
        assert_eq!(parse("busybox").tag_or_latest(), "latest");
        assert_eq!(parse("busybox:1").tag_or_latest(), "1");
        assert_eq!(
            parse("busybox").with_default_tag().to_string(),
            "docker.io/library/busybox:latest"
        );
        let pinned = parse(&format!("busybox@sha256:{HEX}"));
        assert_eq!(pinned.clone().with_default_tag(), pinned);
        assert_eq!(pinned.tag_or_digest(), format!("sha256:{HEX}"));
        assert_eq!(parse("busybox:1").tag_or_digest(), "1");
        let retagged = pinned.with_tag("2").unwrap();
        assert_eq!(retagged.to_string(), "docker.io/library/busybox:2");
        assert!(pinned.with_tag("-x").is_err());
        let digest: Digest = format!("sha256:{HEX}").parse().unwrap();
        assert_eq!(
            parse("a:1").with_digest(digest).familiar(),
            format!("a:1@sha256:{HEX}")
        );
        assert_eq!(parse("a:1").name_only().to_string(), "docker.io/library/a");
        assert_eq!(parse("a:1").name(), "docker.io/library/a");
    }

    #[test]
    fn api_host_and_loopback() {
        assert_eq!(parse("busybox").api_host(), "registry-1.docker.io");
        assert_eq!(
            parse("index.docker.io/library/busybox").api_host(),
            "registry-1.docker.io"
        );
        assert_eq!(parse("localhost:5000/a").api_host(), "localhost:5000");
        for local in [
            "localhost/a",
            "localhost:5000/a",
            "127.0.0.1:5000/a",
            "127.1.2.3/a",
            "[::1]:5000/a",
            "[::1]/a",
        ] {
            assert!(parse(local).is_loopback_registry(), "{local}");
        }
        for remote in [
            "busybox",
            "ghcr.io/a",
            "192.168.0.1:5000/a",
            "[fc00::1]:5000/a",
            "localhost.example.com/a",
        ] {
            assert!(!parse(remote).is_loopback_registry(), "{remote}");
        }
    }

    #[test]
    fn serde_uses_the_full_string() {
        let reference = parse("busybox:1");
        let json = serde_json::to_string(&reference).unwrap();
        assert_eq!(json, "\"docker.io/library/busybox:1\"");
        assert_eq!(serde_json::from_str::<Reference>(&json).unwrap(), reference);
        assert!(serde_json::from_str::<Reference>("\"Bad/Name\"").is_err());
    }
}

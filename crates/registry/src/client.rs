//! The distribution API over HTTP: manifests and blobs, with authentication and retries.
//!
//! Every request goes through [`RegistryClient::send`], which adds the credentials the registry
//! asked for (answering a 401 challenge once, then reusing the scheme and tokens), and retries
//! server errors and dropped connections with backoff. Request bodies are rebuilt for each attempt
//! (a closure reopens the file), so uploads stream from disk and still retry.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use kiln_image::Digest;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode};

use crate::auth::{Challenge, TokenCache, TokenResponse, parse_challenge};
use crate::credentials::{Credentials, CredentialsError, DockerConfig};
use crate::error::RegistryError;

/// Where credentials come from: Docker's config file in production, anything in tests.
pub trait CredentialSource: Send + Sync {
    /// # Errors
    /// When the source itself fails (a broken config file or helper).
    fn credentials_for(&self, registry: &str) -> Result<Option<Credentials>, CredentialsError>;
}

impl CredentialSource for DockerConfig {
    fn credentials_for(&self, registry: &str) -> Result<Option<Credentials>, CredentialsError> {
        DockerConfig::credentials_for(self, registry)
    }
}

/// No credentials at all.
pub struct Anonymous;

impl CredentialSource for Anonymous {
    fn credentials_for(&self, _registry: &str) -> Result<Option<Credentials>, CredentialsError> {
        Ok(None)
    }
}

/// A repository on a registry: `registry` as written in references (`docker.io`,
/// `localhost:5000`), `name` the repository path (`library/busybox`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Repository {
    pub registry: String,
    pub name: String,
}

impl From<&kiln_image::Reference> for Repository {
    /// The repository a (normalised) image reference names: its registry and repository path.
    fn from(reference: &kiln_image::Reference) -> Repository {
        Repository {
            registry: reference.registry().to_string(),
            name: reference.repository().to_string(),
        }
    }
}

impl std::fmt::Display for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.name)
    }
}

/// What a request needs to be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Pull,
    Push,
}

/// A fetched manifest or index.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub media_type: String,
    pub digest: Digest,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Registries reached over plain HTTP besides localhost and loopback addresses.
    pub insecure_registries: Vec<String>,
    /// Attempts per request for server errors and dropped connections.
    pub attempts: u32,
    /// First backoff delay; doubled each retry.
    pub backoff: Duration,
    /// Blobs larger than this are uploaded in chunks of this size.
    pub chunk_size: u64,
}

/// The environment variable that names registries reached over plain HTTP besides loopback ones
/// (comma-separated `host[:port]`): the configuration counterpart of `--insecure-registry`, read by
/// every command that talks to registries, `kiln build` included.
pub const INSECURE_REGISTRIES_ENV: &str = "KILN_INSECURE_REGISTRIES";

/// Splits a comma-separated registry list, dropping blanks and any `http://`/`https://` prefix or
/// trailing `/` (people paste URLs).
pub fn parse_registry_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(|entry| {
            let entry = entry.trim();
            let entry = entry
                .strip_prefix("http://")
                .or_else(|| entry.strip_prefix("https://"))
                .unwrap_or(entry);
            entry.trim_end_matches('/').to_string()
        })
        .filter(|entry| !entry.is_empty())
        .collect()
}

impl ClientOptions {
    /// The defaults plus the insecure registries named in [`INSECURE_REGISTRIES_ENV`].
    pub fn from_env() -> ClientOptions {
        let mut options = ClientOptions::default();
        if let Ok(list) = std::env::var(INSECURE_REGISTRIES_ENV) {
            options.insecure_registries = parse_registry_list(&list);
        }
        options
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure_registries: Vec::new(),
            attempts: 4,
            backoff: Duration::from_millis(200),
            chunk_size: 64 * 1024 * 1024,
        }
    }
}

/// How a registry wants to be authenticated, learnt from its first challenge.
#[derive(Debug, Clone)]
enum Scheme {
    Anonymous,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

pub struct RegistryClient {
    http: reqwest::Client,
    credentials: Arc<dyn CredentialSource>,
    options: ClientOptions,
    tokens: TokenCache,
    schemes: Mutex<HashMap<String, Scheme>>,
}

/// Accept header for manifests: every kind we can read.
pub const MANIFEST_ACCEPT: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// Manifests are small; refuse anything absurd rather than buffer it.
const MAX_MANIFEST_BYTES: usize = 8 * 1024 * 1024;

impl RegistryClient {
    /// # Errors
    /// When the HTTP client cannot be built (no usable TLS roots).
    pub fn new(
        credentials: Arc<dyn CredentialSource>,
        options: ClientOptions,
    ) -> Result<RegistryClient, RegistryError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| RegistryError::Client(e.to_string()))?;
        Ok(RegistryClient {
            http,
            credentials,
            options,
            tokens: TokenCache::default(),
            schemes: Mutex::new(HashMap::new()),
        })
    }

    /// The base URL of a registry's API: Docker Hub's real host, plain HTTP for loopback and
    /// registries named insecure.
    pub fn base_url(&self, registry: &str) -> String {
        let host = match registry {
            "docker.io" | "index.docker.io" => "registry-1.docker.io",
            other => other,
        };
        let scheme = if is_loopback(host)
            || self
                .options
                .insecure_registries
                .iter()
                .any(|r| r == registry)
        {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}")
    }

    fn url(&self, repo: &Repository, tail: &str) -> String {
        format!(
            "{}/v2/{}/{}",
            self.base_url(&repo.registry),
            repo.name,
            tail
        )
    }

    /// Sends a request built by `build` (called again for every attempt), authenticating and
    /// retrying as needed. `scopes` are the token scopes the request needs.
    ///
    /// # Errors
    /// Unauthorized after authenticating, connection failures after every retry, or a failure of
    /// `build` itself.
    pub async fn send<F>(
        &self,
        registry: &str,
        scopes: &[String],
        build: F,
    ) -> Result<Response, RegistryError>
    where
        F: Fn(&reqwest::Client) -> Result<RequestBuilder, RegistryError>,
    {
        let mut attempt = 0u32;
        let mut answered_challenge = false;
        loop {
            attempt += 1;
            let auth = self.auth_header(registry, scopes).await?;
            let mut request = build(&self.http)?;
            if let Some(value) = &auth {
                request = request.header(reqwest::header::AUTHORIZATION, value.clone());
            }
            let retryable = attempt < self.options.attempts;
            match request.send().await {
                Ok(response)
                    if response.status() == StatusCode::UNAUTHORIZED && !answered_challenge =>
                {
                    answered_challenge = true;
                    attempt -= 1;
                    self.learn_challenge(registry, response.headers())?;
                    self.tokens_forget(registry, scopes);
                }
                Ok(response) if response.status().is_server_error() && retryable => {
                    tracing::debug!(status = %response.status(), attempt, "registry server error; retrying");
                    self.backoff(attempt).await;
                }
                Ok(response) => return Ok(response),
                Err(error)
                    if retryable
                        && (error.is_connect() || error.is_timeout() || error.is_request()) =>
                {
                    tracing::debug!(%error, attempt, "registry request failed; retrying");
                    self.backoff(attempt).await;
                }
                Err(error) => {
                    return Err(RegistryError::Connection {
                        registry: registry.to_string(),
                        message: error_chain(&error),
                    });
                }
            }
        }
    }

    async fn backoff(&self, attempt: u32) {
        let delay = self.options.backoff * 2u32.saturating_pow(attempt.saturating_sub(1));
        tokio::time::sleep(delay).await;
    }

    fn tokens_forget(&self, registry: &str, scopes: &[String]) {
        // A 401 with a cached token means the token no longer works: fetch a fresh one.
        self.tokens.put(
            registry,
            &scopes.join(" "),
            String::new(),
            Some(Duration::ZERO),
        );
    }

    fn learn_challenge(&self, registry: &str, headers: &HeaderMap) -> Result<(), RegistryError> {
        let challenge = headers
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(parse_challenge)
            // Prefer bearer when a registry offers both.
            .max_by_key(|c| matches!(c, Challenge::Bearer { .. }));
        let scheme = match challenge {
            Some(Challenge::Basic { .. }) => Scheme::Basic,
            Some(Challenge::Bearer { realm, service, .. }) => Scheme::Bearer { realm, service },
            None => {
                return Err(RegistryError::Unauthorized {
                    registry: registry.to_string(),
                    detail: "the registry refused the request without saying how to authenticate"
                        .into(),
                });
            }
        };
        if let Ok(mut schemes) = self.schemes.lock() {
            schemes.insert(registry.to_string(), scheme);
        }
        Ok(())
    }

    fn credentials(&self, registry: &str) -> Result<Option<Credentials>, RegistryError> {
        self.credentials
            .credentials_for(registry)
            .map_err(|e| RegistryError::Credentials(e.to_string()))
    }

    async fn auth_header(
        &self,
        registry: &str,
        scopes: &[String],
    ) -> Result<Option<HeaderValue>, RegistryError> {
        let scheme = self
            .schemes
            .lock()
            .ok()
            .and_then(|s| s.get(registry).cloned())
            .unwrap_or(Scheme::Anonymous);
        match scheme {
            Scheme::Anonymous => Ok(None),
            Scheme::Basic => match self.credentials(registry)? {
                Some(credentials) => Ok(Some(basic_header(&credentials)?)),
                None => Err(RegistryError::Unauthorized {
                    registry: registry.to_string(),
                    detail: "the registry needs a user name and password; run `kiln login`".into(),
                }),
            },
            Scheme::Bearer { realm, service } => {
                let key = scopes.join(" ");
                let token = match self.tokens.get(registry, &key).filter(|t| !t.is_empty()) {
                    Some(token) => token,
                    None => {
                        let (token, lifetime) = self
                            .fetch_token(registry, &realm, service.as_deref(), scopes)
                            .await?;
                        self.tokens.put(registry, &key, token.clone(), lifetime);
                        token
                    }
                };
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .map(Some)
                    .map_err(|_| {
                        RegistryError::Client("the token server sent an unusable token".into())
                    })
            }
        }
    }

    async fn fetch_token(
        &self,
        registry: &str,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> Result<(String, Option<Duration>), RegistryError> {
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(service) = service {
            query.push(("service", service));
        }
        for scope in scopes {
            query.push(("scope", scope));
        }
        let credentials = self.credentials(registry)?;
        let mut attempt = 0;
        let response = loop {
            attempt += 1;
            let mut request = self.http.get(realm).query(&query);
            if let Some(credentials) = &credentials {
                request =
                    request.header(reqwest::header::AUTHORIZATION, basic_header(credentials)?);
            }
            match request.send().await {
                Ok(response)
                    if response.status().is_server_error() && attempt < self.options.attempts =>
                {
                    self.backoff(attempt).await;
                }
                Ok(response) => break response,
                Err(error)
                    if attempt < self.options.attempts
                        && (error.is_connect() || error.is_timeout()) =>
                {
                    self.backoff(attempt).await;
                }
                Err(error) => {
                    return Err(RegistryError::Connection {
                        registry: realm.to_string(),
                        message: error_chain(&error),
                    });
                }
            }
        };
        let status = response.status();
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(RegistryError::Unauthorized {
                registry: registry.to_string(),
                detail: if credentials.is_some() {
                    "the token server rejected the credentials".into()
                } else {
                    "the registry needs credentials; run `kiln login`".into()
                },
            });
        }
        if !status.is_success() {
            return Err(RegistryError::Status {
                url: realm.to_string(),
                status: status.as_u16(),
                message: body_message(response).await,
            });
        }
        let body: TokenResponse = response.json().await.map_err(|e| {
            RegistryError::Client(format!(
                "the token server at {realm} sent invalid JSON: {e}"
            ))
        })?;
        body.into_token()
            .ok_or_else(|| RegistryError::Unauthorized {
                registry: registry.to_string(),
                detail: "the token server sent no token".into(),
            })
    }

    /// Checks that the registry answers and the credentials work (what `kiln login` does).
    ///
    /// # Errors
    /// Unauthorized, or the registry cannot be reached.
    pub async fn ping(&self, registry: &str) -> Result<(), RegistryError> {
        let url = format!("{}/v2/", self.base_url(registry));
        let response = self.send(registry, &[], |http| Ok(http.get(&url))).await?;
        match response.status() {
            s if s.is_success() => Ok(()),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(RegistryError::Unauthorized {
                registry: registry.to_string(),
                detail: "the credentials were rejected".into(),
            }),
            s => Err(RegistryError::Status {
                url,
                status: s.as_u16(),
                message: body_message(response).await,
            }),
        }
    }

    /// Fetches a manifest or index by tag or digest, and checks a digest reference against the
    /// bytes received.
    ///
    /// # Errors
    /// Not found, unauthorized, a digest mismatch, or an oversized answer.
    pub async fn get_manifest(
        &self,
        repo: &Repository,
        reference: &str,
    ) -> Result<FetchedManifest, RegistryError> {
        let url = self.url(repo, &format!("manifests/{reference}"));
        let scopes = [scope(repo, Access::Pull)];
        let response = self
            .send(&repo.registry, &scopes, |http| {
                Ok(http
                    .get(&url)
                    .header(reqwest::header::ACCEPT, MANIFEST_ACCEPT.join(", ")))
            })
            .await?;
        let response = check_status(
            response,
            &url,
            || format!("manifest {repo}:{reference}"),
            repo,
        )
        .await?;
        let media_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
            .unwrap_or_default();
        if response
            .content_length()
            .is_some_and(|len| len > MAX_MANIFEST_BYTES as u64)
        {
            return Err(RegistryError::InvalidManifest {
                reference: format!("{repo}:{reference}"),
                reason: "larger than 8 MiB".into(),
            });
        }
        let bytes = response
            .bytes()
            .await
            .map_err(|e| RegistryError::Connection {
                registry: repo.registry.clone(),
                message: error_chain(&e),
            })?;
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(RegistryError::InvalidManifest {
                reference: format!("{repo}:{reference}"),
                reason: "larger than 8 MiB".into(),
            });
        }
        let digest = Digest::of(&bytes);
        if let Ok(expected) = reference.parse::<Digest>()
            && expected != digest
        {
            return Err(RegistryError::DigestMismatch {
                what: format!("manifest {repo}@{expected}"),
                expected: expected.to_string(),
                actual: digest.to_string(),
            });
        }
        let media_type = if media_type.is_empty() || media_type == "application/json" {
            // Some registries send no useful Content-Type; the manifest says what it is.
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| {
                    v.get("mediaType")
                        .and_then(|m| m.as_str())
                        .map(str::to_string)
                })
                .unwrap_or(media_type)
        } else {
            media_type
        };
        Ok(FetchedManifest {
            media_type,
            digest,
            bytes: bytes.to_vec(),
        })
    }

    /// Uploads a manifest under a tag or digest; returns its digest.
    ///
    /// # Errors
    /// The registry refuses it (unknown blobs, bad media type), unauthorized, unreachable.
    pub async fn put_manifest(
        &self,
        repo: &Repository,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<Digest, RegistryError> {
        let url = self.url(repo, &format!("manifests/{reference}"));
        let scopes = [scope(repo, Access::Push)];
        let body = bytes::Bytes::copy_from_slice(bytes);
        let response = self
            .send(&repo.registry, &scopes, |http| {
                Ok(http
                    .put(&url)
                    .header(reqwest::header::CONTENT_TYPE, media_type)
                    .body(body.clone()))
            })
            .await?;
        check_status(
            response,
            &url,
            || format!("manifest {repo}:{reference}"),
            repo,
        )
        .await?;
        Ok(Digest::of(bytes))
    }

    /// The size of a blob when the repository has it.
    ///
    /// # Errors
    /// Unauthorized or unreachable (a missing blob is `Ok(None)`).
    pub async fn blob_size(
        &self,
        repo: &Repository,
        digest: &Digest,
        access: Access,
    ) -> Result<Option<u64>, RegistryError> {
        let url = self.url(repo, &format!("blobs/{digest}"));
        let scopes = [scope(repo, access)];
        let response = self
            .send(&repo.registry, &scopes, |http| Ok(http.head(&url)))
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = check_status(response, &url, || format!("blob {digest}"), repo).await?;
        Ok(response
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()))
    }

    /// Starts a blob download from `offset` (0 for all of it). The caller streams the body with
    /// `chunk()` and verifies the digest of what it stores.
    ///
    /// # Errors
    /// Not found, unauthorized, unreachable.
    pub async fn get_blob(
        &self,
        repo: &Repository,
        digest: &Digest,
        offset: u64,
    ) -> Result<Response, RegistryError> {
        let url = self.url(repo, &format!("blobs/{digest}"));
        let scopes = [scope(repo, Access::Pull)];
        let response = self
            .send(&repo.registry, &scopes, |http| {
                let request = http.get(&url);
                Ok(if offset > 0 {
                    request.header(reqwest::header::RANGE, format!("bytes={offset}-"))
                } else {
                    request
                })
            })
            .await?;
        check_status(response, &url, || format!("blob {digest}"), repo).await
    }

    /// Asks the registry to mount a blob from another repository of the same registry. Returns
    /// whether it did (registries may decline, then the blob must be uploaded).
    ///
    /// # Errors
    /// Unauthorized or unreachable.
    pub async fn mount_blob(
        &self,
        repo: &Repository,
        digest: &Digest,
        from: &Repository,
    ) -> Result<bool, RegistryError> {
        let url = format!(
            "{}/v2/{}/blobs/uploads/?mount={digest}&from={}",
            self.base_url(&repo.registry),
            repo.name,
            from.name
        );
        let scopes = [scope(repo, Access::Push), scope(from, Access::Pull)];
        let response = self
            .send(&repo.registry, &scopes, |http| Ok(http.post(&url)))
            .await?;
        match response.status() {
            StatusCode::CREATED => Ok(true),
            // 202: an upload session was opened instead; it expires unused, which is harmless.
            s if s.is_success() => Ok(false),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => Ok(false),
            s => Err(RegistryError::Status {
                url,
                status: s.as_u16(),
                message: body_message(response).await,
            }),
        }
    }

    /// Uploads a blob from a file, streaming: one PUT when it is small, PATCH chunks of
    /// `chunk_size` otherwise. The registry checks the digest when the upload completes.
    ///
    /// # Errors
    /// The file cannot be read, the registry refuses the upload, or it stays unreachable.
    pub async fn upload_blob(
        &self,
        repo: &Repository,
        digest: &Digest,
        path: &Path,
    ) -> Result<(), RegistryError> {
        let size = tokio::fs::metadata(path)
            .await
            .map_err(|e| RegistryError::Io {
                path: path.to_path_buf(),
                source: e,
            })?
            .len();
        let scopes = [scope(repo, Access::Push)];
        let start_url = format!(
            "{}/v2/{}/blobs/uploads/",
            self.base_url(&repo.registry),
            repo.name
        );
        let response = self
            .send(&repo.registry, &scopes, |http| Ok(http.post(&start_url)))
            .await?;
        let response = check_status(
            response,
            &start_url,
            || format!("upload of blob {digest}"),
            repo,
        )
        .await?;
        let mut location = self.location(&repo.registry, &response, &start_url)?;

        if size > self.options.chunk_size {
            let mut offset = 0u64;
            while offset < size {
                let len = self.options.chunk_size.min(size - offset);
                let body_path = path.to_path_buf();
                let chunk_url = location.clone();
                let response = self
                    .send_with_body(
                        &repo.registry,
                        &scopes,
                        Method::PATCH,
                        &chunk_url,
                        &body_path,
                        offset,
                        len,
                        |r| {
                            r.header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
                                .header(
                                    reqwest::header::CONTENT_RANGE,
                                    format!("{}-{}", offset, offset + len - 1),
                                )
                        },
                    )
                    .await?;
                let response = check_status(
                    response,
                    &chunk_url,
                    || format!("upload of blob {digest}"),
                    repo,
                )
                .await?;
                location = self.location(&repo.registry, &response, &chunk_url)?;
                offset += len;
            }
            let url = with_query(&location, &format!("digest={digest}"));
            let response = self
                .send(&repo.registry, &scopes, |http| {
                    Ok(http.put(&url).header(reqwest::header::CONTENT_LENGTH, 0))
                })
                .await?;
            check_status(response, &url, || format!("upload of blob {digest}"), repo).await?;
        } else {
            let url = with_query(&location, &format!("digest={digest}"));
            let response = self
                .send_with_body(
                    &repo.registry,
                    &scopes,
                    Method::PUT,
                    &url,
                    path,
                    0,
                    size,
                    |r| r.header(reqwest::header::CONTENT_TYPE, "application/octet-stream"),
                )
                .await?;
            check_status(response, &url, || format!("upload of blob {digest}"), repo).await?;
        }
        Ok(())
    }

    /// A request whose body is `len` bytes of `path` from `offset`, reopened for each attempt.
    #[allow(clippy::too_many_arguments)]
    async fn send_with_body(
        &self,
        registry: &str,
        scopes: &[String],
        method: Method,
        url: &str,
        path: &Path,
        offset: u64,
        len: u64,
        decorate: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<Response, RegistryError> {
        // `send` wants a synchronous builder; open the file per attempt inside it via a std file
        // turned into a tokio one.
        self.send(registry, scopes, |http| {
            let mut file = std::fs::File::open(path).map_err(|e| RegistryError::Io {
                path: path.to_path_buf(),
                source: e,
            })?;
            std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset)).map_err(|e| {
                RegistryError::Io {
                    path: path.to_path_buf(),
                    source: e,
                }
            })?;
            let file = tokio::fs::File::from_std(file);
            let stream =
                tokio_util::io::ReaderStream::new(tokio::io::AsyncReadExt::take(file, len));
            let request = http
                .request(method.clone(), url)
                .header(reqwest::header::CONTENT_LENGTH, len)
                .body(reqwest::Body::wrap_stream(stream));
            Ok(decorate(request))
        })
        .await
    }

    fn location(
        &self,
        registry: &str,
        response: &Response,
        request_url: &str,
    ) -> Result<String, RegistryError> {
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| RegistryError::Status {
                url: request_url.to_string(),
                status: response.status().as_u16(),
                message: "the registry started an upload without a Location".into(),
            })?;
        Ok(
            if location.starts_with("http://") || location.starts_with("https://") {
                location.to_string()
            } else {
                format!("{}{}", self.base_url(registry), location)
            },
        )
    }
}

/// The token scope for a repository.
pub fn scope(repo: &Repository, access: Access) -> String {
    match access {
        Access::Pull => format!("repository:{}:pull", repo.name),
        Access::Push => format!("repository:{}:pull,push", repo.name),
    }
}

fn with_query(url: &str, query: &str) -> String {
    if url.contains('?') {
        format!("{url}&{query}")
    } else {
        format!("{url}?{query}")
    }
}

fn basic_header(credentials: &Credentials) -> Result<HeaderValue, RegistryError> {
    let encoded = BASE64.encode(format!("{}:{}", credentials.username, credentials.secret));
    HeaderValue::from_str(&format!("Basic {encoded}")).map_err(|_| {
        RegistryError::Credentials(
            "the stored credentials hold characters HTTP cannot carry".into(),
        )
    })
}

/// `localhost`, `127.0.0.0/8` and `::1`, with or without a port: reached over plain HTTP.
pub fn is_loopback(host: &str) -> bool {
    if host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
    {
        return true;
    }
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                host
            }
        })
    };
    if name == "localhost" {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

async fn check_status(
    response: Response,
    url: &str,
    what: impl Fn() -> String,
    repo: &Repository,
) -> Result<Response, RegistryError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    match status {
        StatusCode::NOT_FOUND => Err(RegistryError::NotFound {
            what: what(),
            repository: repo.to_string(),
        }),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(RegistryError::Unauthorized {
            registry: repo.registry.clone(),
            detail: format!(
                "access to {} denied: {}",
                what(),
                body_message(response).await
            ),
        }),
        _ => Err(RegistryError::Status {
            url: url.to_string(),
            status: status.as_u16(),
            message: body_message(response).await,
        }),
    }
}

/// The registry's own words from an error body (`{"errors":[{"message":…}]}`), or the raw text.
async fn body_message(response: Response) -> String {
    let text = response.text().await.unwrap_or_default();
    let from_json = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            let messages: Vec<String> = v
                .get("errors")?
                .as_array()?
                .iter()
                .map(|e| {
                    let code = e.get("code").and_then(|c| c.as_str()).unwrap_or_default();
                    let message = e
                        .get("message")
                        .and_then(|m| m.as_str())
                        .unwrap_or_default();
                    format!("{code}: {message}")
                        .trim_matches([' ', ':'])
                        .to_string()
                })
                .collect();
            (!messages.is_empty()).then(|| messages.join("; "))
        });
    from_json.unwrap_or_else(|| text.chars().take(300).collect())
}

/// reqwest's errors hide their cause (connection refused, reset); users need it.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_use_plain_http() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "example.com",
            "10.0.0.1:5000",
            "registry-1.docker.io",
            "localhost.example.com",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
        let client = RegistryClient::new(
            Arc::new(Anonymous),
            ClientOptions {
                insecure_registries: vec!["reg.internal:5000".into()],
                ..ClientOptions::default()
            },
        )
        .unwrap();
        assert_eq!(client.base_url("docker.io"), "https://registry-1.docker.io");
        assert_eq!(client.base_url("localhost:5000"), "http://localhost:5000");
        assert_eq!(
            client.base_url("reg.internal:5000"),
            "http://reg.internal:5000"
        );
        assert_eq!(client.base_url("ghcr.io"), "https://ghcr.io");
    }

    #[test]
    fn insecure_registry_lists_are_cleaned() {
        assert_eq!(
            parse_registry_list(" reg.internal:5000, http://other:80/ ,,https://third"),
            vec!["reg.internal:5000", "other:80", "third"]
        );
        assert!(parse_registry_list("").is_empty());
        let client = RegistryClient::new(
            Arc::new(Anonymous),
            ClientOptions {
                insecure_registries: parse_registry_list("reg.internal:5000"),
                ..ClientOptions::default()
            },
        )
        .unwrap();
        assert_eq!(
            client.base_url("reg.internal:5000"),
            "http://reg.internal:5000"
        );
        assert_eq!(
            client.base_url("reg.internal:5001"),
            "https://reg.internal:5001"
        );
    }

    #[test]
    fn scopes_and_queries() {
        let repo = Repository {
            registry: "localhost:5000".into(),
            name: "a/b".into(),
        };
        assert_eq!(scope(&repo, Access::Pull), "repository:a/b:pull");
        assert_eq!(scope(&repo, Access::Push), "repository:a/b:pull,push");
        assert_eq!(
            with_query("http://h/u?_state=x", "digest=d"),
            "http://h/u?_state=x&digest=d"
        );
        assert_eq!(with_query("http://h/u", "digest=d"), "http://h/u?digest=d");
    }
}

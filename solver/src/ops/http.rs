//! HTTP(S) sources (`ADD https://…`): the URL is downloaded into a scratch dir as one file, the way
//! BuildKit's http source does it, and a later COPY-like file action takes it from there.
//!
//! BuildKit's rules, followed here: the file is named by the op's `filename`, else by the
//! response's `Content-Disposition` filename, else by the last segment of the URL path, else
//! `download`; its mode is 0600; its mtime is the response's `Last-Modified` (the Unix epoch when
//! absent); a `sha256:` checksum is verified before anything is kept; an archive is never
//! unpacked. Redirects are followed, and connection failures and 5xx/408/429 answers are retried
//! with backoff. The body streams to disk while it is hashed; it is never held in memory.
//!
//! With a checksum the content is known before any request ([`pinned_identity`]): the solver
//! fetches only when a step reading the file runs. Without one, every build must ask the server;
//! as BuildKit does, a download that came with a strong `ETag` is kept in the store, and the next
//! build asks `If-None-Match` and reuses those bytes on `304 Not Modified` ([`revalidate`]).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln_image::Digest;
use sha2::{Digest as _, Sha256};

use crate::error::OpError;
use crate::ops::OpContext;
use crate::result::{LocalDir, OpOutput};
use crate::scratch::ScratchDir;

/// How many times a request is tried in all before a transient failure is reported.
const ATTEMPTS: u32 = 4;
/// The wait before the first retry; doubled for each later one.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The name BuildKit gives a download nothing else names.
const FALLBACK_NAME: &str = "download";
/// The mode of the downloaded file (Docker's and BuildKit's).
const FILE_MODE: u32 = 0o600;

/// Why a download failed. The op error around it names the URL.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("the URL is not a valid http(s) URL: {0}")]
    BadUrl(String),
    #[error("the checksum {0:?} is not sha256:<64 hex digits>")]
    BadChecksum(String),
    #[error("the file name {0:?} is not a single path component")]
    BadFilename(String),
    #[error("setting up the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("starting the download runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("the download thread panicked")]
    Panicked,
    #[error("the request failed{}: {source}", retried(*.attempts))]
    Request {
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },
    #[error("the server answered {status}{}", retried(*.attempts))]
    Status {
        status: reqwest::StatusCode,
        attempts: u32,
    },
    #[error("the server answered 304 Not Modified to a request that asked for no revalidation")]
    UnexpectedNotModified,
    #[error(
        "the server answered 304 Not Modified for ETag {answered}, but kiln asked about {sent}"
    )]
    NotModifiedOtherTag { sent: String, answered: String },
    #[error("the download remembered for revalidation: {0}")]
    Remembered(#[source] kiln_store::StoreError),
    #[error("checksum mismatch: expected {expected}, but the content is {actual}")]
    ChecksumMismatch { expected: String, actual: Digest },
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// ` (after N attempts)` when there were retries.
fn retried(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (after {attempts} attempts)")
    } else {
        String::new()
    }
}

impl HttpError {
    fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HttpError {
        let path = path.to_path_buf();
        move |source| HttpError::Io {
            action,
            path,
            source,
        }
    }
}

/// What a download produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    /// The file, inside the directory given to [`download`].
    pub path: PathBuf,
    /// sha256 of the content.
    pub digest: Digest,
    /// The `Last-Modified` header as sent, when present.
    pub last_modified: Option<String>,
    /// The strong `ETag` the server sent, when it sent one.
    pub etag: Option<String>,
}

/// Runs an Http source op: downloads `url` into a new scratch dir and returns that dir (holding the
/// one file) as the op's output.
///
/// # Errors
/// [`OpError::Io`] with action `fetch` and the URL as its path, wrapping an [`HttpError`]: a bad
/// URL, checksum or file name, a network failure or an error status after the retries, a checksum
/// mismatch, or a local write failure.
pub(crate) fn run_http(
    cx: &OpContext<'_>,
    url: &str,
    checksum: Option<&str>,
    filename: Option<&str>,
) -> Result<OpOutput, OpError> {
    let scratch = ScratchDir::new(cx.store, "http").map_err(OpError::io(
        "create a scratch dir in",
        cx.store.scratch_dir(),
    ))?;
    let dir = scratch.path().join("download");
    let fetch_error = |error: HttpError| OpError::Io {
        action: "fetch",
        path: PathBuf::from(url),
        source: std::io::Error::other(error),
    };
    std::fs::create_dir(&dir)
        .map_err(HttpError::io("create", &dir))
        .map_err(fetch_error)?;
    let (downloaded, reused) = match checksum {
        Some(_) => (
            download(url, checksum, filename, &dir).map_err(fetch_error)?,
            false,
        ),
        None => revalidate(cx.store, url, filename, &dir).map_err(fetch_error)?,
    };
    let short = downloaded.digest.to_string();
    let short = short.get(..19).unwrap_or_default();
    cx.output(if reused {
        format!("{url} not modified (ETag); reused the earlier download ({short})")
    } else {
        format!("downloaded {url} ({short})")
    });
    let name = downloaded
        .path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A checksum pins the content: `Last-Modified` is left out then, as BuildKit does.
    let last_modified = match checksum {
        Some(_) => None,
        None => downloaded.last_modified.as_deref(),
    };
    let identity = cache_identity(&downloaded.digest, &name, last_modified);
    Ok(OpOutput::Local(LocalDir {
        name: url.to_string(),
        path: dir,
        _staged: Some(Arc::new(scratch)),
        content_identity: Some(identity),
        ignore: None,
    }))
}

/// What kiln keeps of a download without a checksum that came with a strong `ETag`, so that the
/// next build can ask `If-None-Match` and, on `304 Not Modified`, reuse the bytes instead of
/// transferring them again (as BuildKit does). The content is a blob of the store, which the
/// record references, so prune keeps it as long as the record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Remembered {
    etag: String,
    digest: Digest,
    name: String,
    last_modified: Option<String>,
}

/// The store record of the downloads of `url` (named `filename`), like BuildKit's URL hash.
fn remembered_key(url: &str, filename: Option<&str>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(url.as_bytes());
    hasher.update(b"\0");
    hasher.update(filename.unwrap_or_default().as_bytes());
    format!("kiln.http.v1:{}", hex::encode(hasher.finalize()))
}

/// The remembered download under `key`, if its content is still in the store.
fn recall(store: &kiln_store::Store, key: &str) -> Option<Remembered> {
    let record = match store.get_cache_record(key) {
        Ok(record) => record?,
        Err(error) => {
            tracing::debug!(%error, "reading a remembered download; downloading in full");
            return None;
        }
    };
    let kiln_store::CacheValue::Json(value) = record.value else {
        return None;
    };
    let remembered: Remembered = serde_json::from_value(value).ok()?;
    store.has_blob(&remembered.digest).then_some(remembered)
}

/// Keeps `downloaded` (when it has a strong `ETag`) in the store under `key`.
fn remember(
    store: &kiln_store::Store,
    key: &str,
    downloaded: &Downloaded,
) -> Result<(), HttpError> {
    let Some(etag) = &downloaded.etag else {
        return Ok(());
    };
    if !store.has_blob(&downloaded.digest) {
        let mut file =
            File::open(&downloaded.path).map_err(HttpError::io("open", &downloaded.path))?;
        store
            .ingest_from(&mut file, Some(&downloaded.digest))
            .map_err(HttpError::Remembered)?;
    }
    let remembered = Remembered {
        etag: etag.clone(),
        digest: downloaded.digest.clone(),
        name: downloaded
            .path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default(),
        last_modified: downloaded.last_modified.clone(),
    };
    let value = serde_json::to_value(&remembered).map_err(|error| {
        HttpError::Remembered(kiln_store::StoreError::Json {
            what: format!("encode the remembered download {key}"),
            source: error,
        })
    })?;
    store
        .put_cache_record(
            key,
            &kiln_store::CacheValue::Json(value),
            &[kiln_store::Resource::Blob(downloaded.digest.clone())],
        )
        .map_err(HttpError::Remembered)
}

/// Writes the remembered content into `dir` as the download would have (name, mode 0600, mtime
/// from the remembered `Last-Modified`).
fn restore_remembered(
    store: &kiln_store::Store,
    remembered: &Remembered,
    dir: &Path,
) -> Result<Downloaded, HttpError> {
    let partial = dir.join(".download.partial");
    let copied = (|| {
        let mut blob = store
            .open_blob(&remembered.digest)
            .map_err(HttpError::Remembered)?;
        let mut file = File::create(&partial).map_err(HttpError::io("create", &partial))?;
        std::io::copy(&mut blob, &mut file).map_err(HttpError::io("write", &partial))?;
        file.sync_all().map_err(HttpError::io("sync", &partial))
    })();
    if let Err(error) = copied {
        remove_quietly(&partial);
        return Err(error);
    }
    let downloaded = finish(
        &partial,
        &dir.join(&remembered.name),
        remembered.digest.clone(),
        remembered.last_modified.clone(),
    )?;
    Ok(Downloaded {
        etag: Some(remembered.etag.clone()),
        ..downloaded
    })
}

/// Downloads `url` (no checksum) into `dir`, revalidating an earlier download of it with its
/// `ETag` when the store still has one: on `304 Not Modified` the earlier bytes are reused (the
/// second value is then `true`). A server that ignores `If-None-Match` simply sends the body.
/// Remembering a download is best effort: failing to is logged, not an error.
///
/// # Errors
/// As [`download`].
fn revalidate(
    store: &kiln_store::Store,
    url: &str,
    filename: Option<&str>,
    dir: &Path,
) -> Result<(Downloaded, bool), HttpError> {
    let key = remembered_key(url, filename);
    let known = recall(store, &key);
    let etag = known.as_ref().map(|known| known.etag.as_str());
    let answer = match request(url, None, filename, dir, etag) {
        Err(error @ HttpError::NotModifiedOtherTag { .. }) => {
            tracing::warn!(%error, "downloading again");
            Fetched::Downloaded(download(url, None, filename, dir)?)
        }
        other => other?,
    };
    let fetched = match (answer, known) {
        (Fetched::NotModified, Some(known)) => match restore_remembered(store, &known, dir) {
            Ok(downloaded) => return Ok((downloaded, true)),
            Err(error) => {
                tracing::warn!(%error, "could not reuse an earlier download; downloading again");
                download(url, None, filename, dir)?
            }
        },
        (Fetched::NotModified, None) => return Err(HttpError::UnexpectedNotModified),
        (Fetched::Downloaded(downloaded), _) => downloaded,
    };
    if let Err(error) = remember(store, &key, &fetched) {
        tracing::debug!(%error, "could not remember a download for revalidation");
    }
    Ok((fetched, false))
}

/// The identity of a download pinned by `checksum` (`sha256:<hex>`), known before anything is
/// fetched: what [`run_http`] will give its output, so a step reading it can hit the cache without
/// a request, as BuildKit keys its http source by the checksum. The name comes from `filename`,
/// else the URL (never from a response, which is not there yet; [`download`] then ignores
/// `Content-Disposition` too). `None` when the checksum, name or URL is invalid: the op then runs
/// and reports the problem.
pub(crate) fn pinned_identity(url: &str, checksum: &str, filename: Option<&str>) -> Option<String> {
    let digest = parse_checksum(checksum).ok()?;
    let parsed = reqwest::Url::parse(url).ok()?;
    let name = pinned_name(&parsed, filename).ok()?;
    Some(cache_identity(&digest, &name, None))
}

/// The file name of a download whose content is pinned by a checksum: the given name, else the
/// last URL path segment, else the fallback (BuildKit's `getFileName` without a response).
fn pinned_name(url: &reqwest::Url, filename: Option<&str>) -> Result<String, HttpError> {
    match filename {
        Some(name) => check_filename(name).map(|()| name.to_string()),
        None => Ok(url_name(url).unwrap_or_else(|| FALLBACK_NAME.to_string())),
    }
}

/// How a download enters the keys of the ops that read it: what a copy of it can differ by (its
/// mode is always 0600). The URL is left out, as in BuildKit, so the same bytes from a mirror hit
/// the same cache. With a checksum, `digest` is that checksum and `last_modified` is `None`, so
/// the identity is known before downloading.
pub(crate) fn cache_identity(digest: &Digest, name: &str, last_modified: Option<&str>) -> String {
    format!(
        "http:{digest} name={name:?} last_modified={:?}",
        last_modified.unwrap_or_default()
    )
}

/// Downloads `url` into the existing, empty directory `dir` as one file (named as the module doc
/// says), mode 0600, mtime from `Last-Modified`. With `checksum` (`sha256:<hex>`) the content must
/// match it, else nothing is left in `dir`.
///
/// # Errors
/// [`HttpError`] saying what failed.
pub fn download(
    url: &str,
    checksum: Option<&str>,
    filename: Option<&str>,
    dir: &Path,
) -> Result<Downloaded, HttpError> {
    match request(url, checksum, filename, dir, None)? {
        Fetched::Downloaded(downloaded) => Ok(downloaded),
        // Never: a 304 needs an `If-None-Match`, and none was sent.
        Fetched::NotModified => Err(HttpError::UnexpectedNotModified),
    }
}

/// [`download`], optionally conditional on `if_none_match` (an `ETag` of an earlier download).
fn request(
    url: &str,
    checksum: Option<&str>,
    filename: Option<&str>,
    dir: &Path,
    if_none_match: Option<&str>,
) -> Result<Fetched, HttpError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| HttpError::BadUrl(e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(HttpError::BadUrl(format!(
            "the scheme {:?} is not http or https",
            parsed.scheme()
        )));
    }
    let expected = checksum.map(parse_checksum).transpose()?;
    if let Some(name) = filename {
        check_filename(name)?;
    }
    // Async reqwest on a private current-thread runtime, on a thread of its own so that it never
    // nests inside a runtime the caller may be running on.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(HttpError::Runtime)?;
                runtime.block_on(fetch(
                    parsed,
                    expected.as_ref(),
                    filename,
                    dir,
                    if_none_match,
                ))
            })
            .join()
            .unwrap_or(Err(HttpError::Panicked))
    })
}

fn parse_checksum(text: &str) -> Result<Digest, HttpError> {
    let valid = text
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if !valid {
        return Err(HttpError::BadChecksum(text.to_string()));
    }
    text.to_ascii_lowercase()
        .parse()
        .map_err(|_| HttpError::BadChecksum(text.to_string()))
}

fn check_filename(name: &str) -> Result<(), HttpError> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(HttpError::BadFilename(name.to_string()));
    }
    Ok(())
}

/// What a (possibly conditional) request gave.
enum Fetched {
    Downloaded(Downloaded),
    /// The server answered `304 Not Modified` to the `If-None-Match` sent.
    NotModified,
}

async fn fetch(
    url: reqwest::Url,
    expected: Option<&Digest>,
    filename: Option<&str>,
    dir: &Path,
    if_none_match: Option<&str>,
) -> Result<Fetched, HttpError> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(120))
        .redirect(reqwest::redirect::Policy::limited(10))
        .build()
        .map_err(HttpError::Client)?;
    // The body goes to a partial file first; it gets its name only once complete and verified.
    let partial = dir.join(".download.partial");
    let mut attempt = 0;
    loop {
        attempt += 1;
        let retry = attempt < ATTEMPTS;
        match try_once(&client, &url, &partial, if_none_match).await {
            Ok(None) => return Ok(Fetched::NotModified),
            Ok(Some(body)) => {
                if let Some(expected) = expected
                    && *expected != body.digest
                {
                    remove_quietly(&partial);
                    return Err(HttpError::ChecksumMismatch {
                        expected: expected.to_string(),
                        actual: body.digest,
                    });
                }
                // With a checksum the name was fixed before the request (see `pinned_identity`).
                let name = match expected {
                    Some(_) => pinned_name(&url, filename)?,
                    None => filename
                        .map(str::to_string)
                        .or(body.disposition_name)
                        .or_else(|| url_name(&url))
                        .unwrap_or_else(|| FALLBACK_NAME.to_string()),
                };
                return finish(&partial, &dir.join(name), body.digest, body.last_modified).map(
                    |downloaded| {
                        Fetched::Downloaded(Downloaded {
                            etag: body.etag,
                            ..downloaded
                        })
                    },
                );
            }
            Err(Attempt::Transient(error)) if retry => {
                tracing::debug!(%url, attempt, %error, "download failed; retrying");
            }
            Err(Attempt::Transient(error) | Attempt::Fatal(error)) => {
                remove_quietly(&partial);
                return Err(with_attempts(error, attempt));
            }
        }
        tokio::time::sleep(FIRST_BACKOFF * 2u32.pow(attempt - 1)).await;
    }
}

fn with_attempts(error: HttpError, attempts: u32) -> HttpError {
    match error {
        HttpError::Request { source, .. } => HttpError::Request { attempts, source },
        HttpError::Status { status, .. } => HttpError::Status { status, attempts },
        other => other,
    }
}

fn remove_quietly(path: &Path) {
    if let Err(error) = std::fs::remove_file(path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        tracing::debug!(path = %path.display(), %error, "removing a partial download");
    }
}

/// One response body, on disk.
struct Body {
    digest: Digest,
    last_modified: Option<String>,
    disposition_name: Option<String>,
    /// A strong `ETag`, when the server sent one.
    etag: Option<String>,
}

/// How one attempt failed: worth retrying or not.
enum Attempt {
    Transient(HttpError),
    Fatal(HttpError),
}

/// One request; `Ok(None)` when `if_none_match` was sent and the server answered 304.
async fn try_once(
    client: &reqwest::Client,
    url: &reqwest::Url,
    partial: &Path,
    if_none_match: Option<&str>,
) -> Result<Option<Body>, Attempt> {
    let request_failed = |source: reqwest::Error| {
        let error = HttpError::Request {
            attempts: 1,
            source,
        };
        // Anything below HTTP (refused, reset, timed out, a broken body) may pass.
        Attempt::Transient(error)
    };
    let mut request = client.get(url.clone());
    if let Some(etag) = if_none_match {
        request = request.header(reqwest::header::IF_NONE_MATCH, etag);
    }
    let mut response = request.send().await.map_err(request_failed)?;
    let status = response.status();
    if let Some(sent) = if_none_match
        && status == reqwest::StatusCode::NOT_MODIFIED
    {
        // Without an ETag the answer is about the one tag sent; with another one it is not.
        return match response.headers().get(reqwest::header::ETAG) {
            Some(tag) if tag.as_bytes() != sent.as_bytes() => {
                Err(Attempt::Fatal(HttpError::NotModifiedOtherTag {
                    sent: sent.to_string(),
                    answered: String::from_utf8_lossy(tag.as_bytes()).into_owned(),
                }))
            }
            _ => Ok(None),
        };
    }
    if !status.is_success() {
        let error = HttpError::Status {
            status,
            attempts: 1,
        };
        let transient = status.is_server_error()
            || status == reqwest::StatusCode::REQUEST_TIMEOUT
            || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
        return Err(if transient {
            Attempt::Transient(error)
        } else {
            Attempt::Fatal(error)
        });
    }
    let header = |name: reqwest::header::HeaderName| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string)
    };
    let last_modified = header(reqwest::header::LAST_MODIFIED);
    // Only a strong validator promises the same bytes; a weak one (`W/"…"`) is not kept.
    let etag = header(reqwest::header::ETAG).filter(|etag| !etag.starts_with("W/"));
    let disposition_name = header(reqwest::header::CONTENT_DISPOSITION)
        .as_deref()
        .and_then(disposition_filename);

    let mut file = File::create(partial)
        .map_err(HttpError::io("create", partial))
        .map_err(Attempt::Fatal)?;
    let mut hasher = Sha256::new();
    while let Some(chunk) = response.chunk().await.map_err(request_failed)? {
        hasher.update(&chunk);
        file.write_all(&chunk)
            .map_err(HttpError::io("write", partial))
            .map_err(Attempt::Fatal)?;
    }
    file.sync_all()
        .map_err(HttpError::io("sync", partial))
        .map_err(Attempt::Fatal)?;
    Ok(Some(Body {
        digest: Digest::from_hasher(hasher),
        last_modified,
        disposition_name,
        etag,
    }))
}

/// Gives the complete download its mode, mtime and name.
fn finish(
    partial: &Path,
    path: &Path,
    digest: Digest,
    last_modified: Option<String>,
) -> Result<Downloaded, HttpError> {
    std::fs::set_permissions(partial, std::fs::Permissions::from_mode(FILE_MODE))
        .map_err(HttpError::io("set the mode of", partial))?;
    let mtime = last_modified
        .as_deref()
        .and_then(parse_http_date)
        .unwrap_or(UNIX_EPOCH);
    File::options()
        .write(true)
        .open(partial)
        .and_then(|file| {
            file.set_times(
                std::fs::FileTimes::new()
                    .set_accessed(mtime)
                    .set_modified(mtime),
            )
        })
        .map_err(HttpError::io("set the mtime of", partial))?;
    std::fs::rename(partial, path).map_err(HttpError::io("rename the download to", path))?;
    Ok(Downloaded {
        path: path.to_path_buf(),
        digest,
        last_modified,
        etag: None,
    })
}

/// The last segment of the URL's path (percent-decoding left as is, as Go's `path.Base` of the
/// parsed path does), when there is one.
fn url_name(url: &reqwest::Url) -> Option<String> {
    let path = url.path().trim_end_matches('/');
    let name = path.rsplit('/').next().unwrap_or_default();
    let decoded = percent_decode(name);
    (check_filename(&decoded).is_ok()).then_some(decoded)
}

/// Decodes `%XX` escapes of a URL path segment (invalid escapes and non-UTF-8 results stay as
/// they were).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escape = (bytes[index] == b'%')
            .then(|| text.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escape {
            Some(byte) => {
                out.push(byte);
                index += 3;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| text.to_string())
}

/// The base name of the `filename` parameter of a `Content-Disposition` value, if usable.
fn disposition_filename(value: &str) -> Option<String> {
    let mut params = value.split(';').skip(1);
    let raw = params.find_map(|param| {
        let (key, value) = param.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("filename")
            .then(|| value.trim())
    })?;
    let unquoted = match raw.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => raw.to_string(),
    };
    if unquoted.is_empty() || unquoted.ends_with('/') {
        return None;
    }
    let base = unquoted.rsplit('/').next().unwrap_or_default().to_string();
    check_filename(&base).ok().map(|()| base)
}

/// Parses an HTTP date in the IMF-fixdate form (`Sun, 06 Nov 1994 08:49:37 GMT`), the one form
/// servers send (RFC 9110 §5.6.7).
fn parse_http_date(text: &str) -> Option<SystemTime> {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let parsed = time::PrimitiveDateTime::parse(text.trim(), format).ok()?;
    Some(parsed.assume_utc().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse_to_their_instant() {
        let time = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            time.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            784_111_777
        );
        assert_eq!(parse_http_date("yesterday"), None);
    }

    #[test]
    fn content_disposition_names_are_reduced_to_a_base_name() {
        assert_eq!(
            disposition_filename("attachment; filename=\"tool-1.2.tar.gz\"").as_deref(),
            Some("tool-1.2.tar.gz")
        );
        assert_eq!(
            disposition_filename("attachment; FileName=a/b/c.txt").as_deref(),
            Some("c.txt")
        );
        assert_eq!(disposition_filename("attachment; filename=\"dir/\""), None);
        assert_eq!(disposition_filename("attachment"), None);
        assert_eq!(disposition_filename("attachment; filename=\"..\""), None);
    }

    #[test]
    fn url_names_come_from_the_last_path_segment() {
        let name = |url: &str| url_name(&reqwest::Url::parse(url).unwrap());
        assert_eq!(
            name("https://example.com/a/b/tool.tar.gz?x=1").as_deref(),
            Some("tool.tar.gz")
        );
        assert_eq!(
            name("https://example.com/dir/").as_deref(),
            Some("dir"),
            "a trailing slash is dropped, as path.Base does"
        );
        assert_eq!(
            name("https://example.com/my%20file").as_deref(),
            Some("my file")
        );
        assert_eq!(name("https://example.com/"), None);
    }

    #[test]
    fn checksums_must_be_sha256_with_64_hex_digits() {
        assert!(parse_checksum(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(parse_checksum("sha256:abc").is_err());
        assert!(parse_checksum(&format!("md5:{}", "a".repeat(64))).is_err());
    }

    /// Serves `response` (a whole HTTP/1.1 response) to every connection on 127.0.0.1; returns
    /// the base URL.
    fn serve(response: &'static str) -> String {
        use std::io::{BufRead, BufReader};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let _ = stream.write_all(response.as_bytes());
            }
        });
        format!("http://127.0.0.1:{port}")
    }

    #[test]
    fn without_a_given_name_the_content_disposition_names_the_file() {
        let base = serve(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\
             Content-Disposition: attachment; filename=\"report.csv\"\r\n\r\na,b",
        );
        let dir = tempfile::tempdir().unwrap();
        let downloaded = download(&format!("{base}/export?id=1"), None, None, dir.path()).unwrap();
        assert_eq!(downloaded.path, dir.path().join("report.csv"));
        assert_eq!(std::fs::read(&downloaded.path).unwrap(), b"a,b");
        assert_eq!(downloaded.digest, Digest::of(b"a,b"));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the file is left in the dir");
    }

    #[test]
    fn with_a_checksum_the_name_and_identity_are_known_before_the_request() {
        let base = serve(
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\
             Content-Disposition: attachment; filename=\"report.csv\"\r\n\r\na,b",
        );
        let url = format!("{base}/export");
        let checksum = Digest::of(b"a,b").to_string();
        let identity = pinned_identity(&url, &checksum, None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let downloaded = download(&url, Some(&checksum), None, dir.path()).unwrap();
        assert_eq!(
            downloaded.path,
            dir.path().join("export"),
            "the response cannot rename a pinned download"
        );
        assert_eq!(
            identity,
            cache_identity(&downloaded.digest, "export", None),
            "the identity computed up front is the one the download gets"
        );
        assert_eq!(
            pinned_identity(&url, &checksum, Some("given.csv")).unwrap(),
            cache_identity(&downloaded.digest, "given.csv", None)
        );
        assert_eq!(pinned_identity(&url, "sha256:short", None), None);
        assert_eq!(pinned_identity(&url, &checksum, Some("a/b")), None);
    }

    /// Serves `body` with a strong `ETag` (or a weak one), answering `304 Not Modified` to a
    /// request whose `If-None-Match` is that tag; returns the base URL and the count of bodies
    /// sent.
    fn serve_with_etag(
        body: &'static str,
        etag: &'static str,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, BufReader};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let bodies = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let sent = std::sync::Arc::clone(&bodies);
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                let mut matched = false;
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    let lower = line.to_ascii_lowercase();
                    if let Some(value) = lower.strip_prefix("if-none-match:") {
                        matched = value.trim() == etag.to_ascii_lowercase();
                    }
                    line.clear();
                }
                let response = if matched {
                    format!(
                        "HTTP/1.1 304 Not Modified\r\nETag: {etag}\r\nConnection: close\r\n\r\n"
                    )
                } else {
                    sent.fetch_add(1, Ordering::SeqCst);
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: {etag}\r\n\
                         Last-Modified: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = stream.write_all(response.as_bytes());
            }
        });
        (format!("http://127.0.0.1:{port}"), bodies)
    }

    #[test]
    fn a_strong_etag_lets_the_next_download_reuse_the_bytes() {
        use std::sync::atomic::Ordering;
        let (base, bodies) = serve_with_etag("tool v1", "\"v1\"");
        let root = tempfile::tempdir().unwrap();
        let store = kiln_store::Store::open(root.path()).unwrap();
        let url = format!("{base}/tool");
        let first_dir = tempfile::tempdir().unwrap();
        let (first, reused) = revalidate(&store, &url, Some("tool"), first_dir.path()).unwrap();
        assert!(!reused);
        assert_eq!(bodies.load(Ordering::SeqCst), 1);

        let second_dir = tempfile::tempdir().unwrap();
        let (second, reused) = revalidate(&store, &url, Some("tool"), second_dir.path()).unwrap();
        assert!(reused, "304: the earlier bytes are reused");
        assert_eq!(bodies.load(Ordering::SeqCst), 1, "no second body");
        assert_eq!(second.digest, first.digest);
        assert_eq!(second.last_modified, first.last_modified);
        assert_eq!(second.path, second_dir.path().join("tool"));
        assert_eq!(std::fs::read(&second.path).unwrap(), b"tool v1");
        let meta = std::fs::metadata(&second.path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, FILE_MODE);
        assert_eq!(
            meta.modified().unwrap(),
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap()
        );
        assert_eq!(std::fs::read_dir(second_dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_304_about_another_tag_is_not_trusted() {
        use std::io::{BufRead, BufReader};
        // Answers any conditional request with 304 for a tag it was not asked about.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let (mut line, mut conditional) = (String::new(), false);
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    conditional |= line.to_ascii_lowercase().starts_with("if-none-match:");
                    line.clear();
                }
                let response = if conditional {
                    "HTTP/1.1 304 Not Modified\r\nETag: \"other\"\r\nConnection: close\r\n\r\n"
                } else {
                    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nETag: \"a\"\r\nConnection: close\r\n\r\nv1"
                };
                let _ = stream.write_all(response.as_bytes());
            }
        });
        let root = tempfile::tempdir().unwrap();
        let store = kiln_store::Store::open(root.path()).unwrap();
        let url = format!("http://127.0.0.1:{port}/f");
        let dir = tempfile::tempdir().unwrap();
        assert!(!revalidate(&store, &url, None, dir.path()).unwrap().1);
        let dir = tempfile::tempdir().unwrap();
        let (downloaded, reused) = revalidate(&store, &url, None, dir.path()).unwrap();
        assert!(!reused, "downloaded again");
        assert_eq!(std::fs::read(downloaded.path).unwrap(), b"v1");
    }

    #[test]
    fn a_weak_etag_is_never_used_to_skip_a_download() {
        use std::sync::atomic::Ordering;
        let (base, bodies) = serve_with_etag("page", "W/\"p\"");
        let root = tempfile::tempdir().unwrap();
        let store = kiln_store::Store::open(root.path()).unwrap();
        let url = format!("{base}/page");
        for _ in 0..2 {
            let dir = tempfile::tempdir().unwrap();
            let (_, reused) = revalidate(&store, &url, None, dir.path()).unwrap();
            assert!(!reused);
        }
        assert_eq!(bodies.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_url_without_a_path_gives_the_fallback_name() {
        let base = serve("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi");
        let dir = tempfile::tempdir().unwrap();
        let downloaded = download(&format!("{base}/"), None, None, dir.path()).unwrap();
        assert_eq!(downloaded.path, dir.path().join(FALLBACK_NAME));
    }

    #[test]
    fn a_checksum_mismatch_leaves_nothing_behind() {
        let base = serve("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi");
        let dir = tempfile::tempdir().unwrap();
        let wanted = format!("sha256:{}", "1".repeat(64));
        let error =
            download(&format!("{base}/f"), Some(&wanted), Some("f"), dir.path()).unwrap_err();
        let text = error.to_string();
        assert!(text.contains(&wanted), "{text}");
        assert!(text.contains(&Digest::of(b"hi").to_string()), "{text}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn file_names_with_separators_are_refused() {
        assert!(check_filename("a.txt").is_ok());
        for bad in ["", ".", "..", "a/b"] {
            assert!(check_filename(bad).is_err(), "{bad:?}");
        }
    }
}

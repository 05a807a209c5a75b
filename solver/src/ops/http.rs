//! HTTP(S) sources (`ADD https://…`): the URL is downloaded into a scratch dir as one file, the way
//! BuildKit's http source does it, and a later COPY-like file action takes it from there.
//!
//! BuildKit's rules, followed here: the file is named by the op's `filename`, else by the
//! response's `Content-Disposition` filename, else by the last segment of the URL path, else
//! `download`; its mode is 0600; its mtime is the response's `Last-Modified` (the Unix epoch when
//! absent); a `sha256:` checksum is verified before anything is kept; an archive is never
//! unpacked. Redirects are followed, and connection failures and 5xx/408/429 answers are retried
//! with backoff. The body streams to disk while it is hashed; it is never held in memory.

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
    let downloaded = download(url, checksum, filename, &dir).map_err(fetch_error)?;
    cx.output(format!(
        "downloaded {url} ({})",
        downloaded.digest.to_string().get(..19).unwrap_or_default()
    ));
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

/// [`pinned_identity`] of an Http source with a checksum; `None` for any other source.
pub(crate) fn pinned_source_identity(source: &kiln_llb::SourceOp) -> Option<String> {
    match source {
        kiln_llb::SourceOp::Http {
            url,
            checksum: Some(checksum),
            filename,
        } => pinned_identity(url, checksum, filename.as_deref()),
        _ => None,
    }
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
                runtime.block_on(fetch(parsed, expected.as_ref(), filename, dir))
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

async fn fetch(
    url: reqwest::Url,
    expected: Option<&Digest>,
    filename: Option<&str>,
    dir: &Path,
) -> Result<Downloaded, HttpError> {
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
        match try_once(&client, &url, &partial).await {
            Ok(body) => {
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
                return finish(&partial, &dir.join(name), body.digest, body.last_modified);
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
}

/// How one attempt failed: worth retrying or not.
enum Attempt {
    Transient(HttpError),
    Fatal(HttpError),
}

async fn try_once(
    client: &reqwest::Client,
    url: &reqwest::Url,
    partial: &Path,
) -> Result<Body, Attempt> {
    let request_failed = |source: reqwest::Error| {
        let error = HttpError::Request {
            attempts: 1,
            source,
        };
        // Anything below HTTP (refused, reset, timed out, a broken body) may pass.
        Attempt::Transient(error)
    };
    let mut response = client
        .get(url.clone())
        .send()
        .await
        .map_err(request_failed)?;
    let status = response.status();
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
    Ok(Body {
        digest: Digest::from_hasher(hasher),
        last_modified,
        disposition_name,
    })
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

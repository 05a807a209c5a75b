//! Where `kiln build` takes its files from besides a local directory: URL contexts (a Git
//! repository, a tarball or a Dockerfile over HTTP(S)) and `--build-context NAME=VALUE` named
//! contexts, following `docker buildx build`.
//!
//! Remote content is fetched by the solver's own Git and HTTP sources (the ones `ADD` uses): a
//! one-op definition is solved and its directory kept alive for the build. What comes back is
//! then an ordinary local directory, so a COPY from it is keyed by the checksums of the paths it
//! reads, exactly as for the main context.
//!
//! Docker's rules, followed here:
//! - a context argument that is an existing directory is local; else a Git URL (`git://`,
//!   `git@`, `ssh://`, `github.com/`, or `http(s)://….git`) is cloned, with `#ref:subdir`
//!   choosing the ref and the sub-directory; else an `http(s)://` URL is downloaded: an archive
//!   (plain or compressed tar) is the context, anything else is the Dockerfile of an empty context;
//! - a named context is `docker-image://REF` (an image, resolved like FROM),
//!   `oci-layout://PATH[:TAG|@DIGEST]` (see `oci_layout_context`), a Git URL, an
//!   `http(s)://` URL (the downloaded file, not unpacked, as BuildKit's named HTTP context), or a
//!   local directory with its own `.dockerignore` (never the Dockerfile's, as BuildKit);
//! - names are image-reference names, compared in their familiar form without `:latest`
//!   (`docker.io/library/alpine:latest` and `alpine` are one name).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use kiln_frontend::lower::NamedContext;
use kiln_solver::progress::Progress;
use kiln_solver::{LocalSource, OpOutput, ScratchDir, SnapshotterKind, SolveOptions, Solver};
use kiln_store::Store;

/// Why a context could not be parsed or prepared.
#[derive(Debug, thiserror::Error)]
pub enum BuildInputError {
    #[error("invalid --build-context {value:?}: expected NAME=VALUE")]
    MissingEquals { value: String },
    #[error("invalid --build-context name {name:?}: {reason}")]
    BadName { name: String, reason: String },
    #[error("--build-context {name} is given twice")]
    Duplicate { name: String },
    #[error(
        "--build-context {name}: the name {name:?} is the main context's; give the directory as the build's CONTEXT instead"
    )]
    ReservedName { name: String },
    #[error("--build-context {name}={value}: {reason}")]
    Unsupported {
        name: String,
        value: String,
        reason: &'static str,
    },
    #[error("--build-context {name}: build context {path:?} is not a directory")]
    NotADirectory { name: String, path: PathBuf },
    #[error("--build-context {name}: cannot read build context {path:?}")]
    Unreadable {
        name: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {}", path.display())]
    ReadIgnore {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("fetching the context {url}")]
    Fetch {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("fetching the context {url}: the download produced {found} files, not one")]
    DownloadShape { url: String, found: usize },
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unpacking the context downloaded from {url}")]
    Unpack {
        url: String,
        #[source]
        source: kiln_context::stdin_context::StdinContextError,
    },
    #[error("the Dockerfile downloaded from {url} is not UTF-8")]
    DockerfileNotUtf8 { url: String },
    #[error("--build-context {name}: cannot use the OCI layout")]
    OciLayout {
        name: String,
        #[source]
        source: Box<crate::oci_layout_context::OciLayoutError>,
    },
}

/// A Git repository to check out, as Docker reads `URL#ref:subdir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitContext {
    pub url: String,
    /// A branch, tag or commit; `None` for the remote's default branch.
    pub reference: Option<String>,
    /// A directory of the repository to use as the context's root.
    pub subdir: Option<String>,
}

/// A context that is not a local directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteContext {
    Git(GitContext),
    Http(String),
}

impl RemoteContext {
    fn url(&self) -> &str {
        match self {
            RemoteContext::Git(git) => &git.url,
            RemoteContext::Http(url) => url,
        }
    }
}

/// Whether `value` is a Git URL by Docker's rules (moby's `urlutil.IsGitURL`, plus `ssh://`
/// which BuildKit also clones).
pub fn is_git_url(value: &str) -> bool {
    if ["git://", "git@", "github.com/", "ssh://"]
        .iter()
        .any(|prefix| value.starts_with(prefix))
    {
        return true;
    }
    if !is_http_url(value) {
        return false;
    }
    // `….git`, optionally followed by a non-empty `#fragment`.
    let path = match value.split_once('#') {
        Some((path, fragment)) if !fragment.is_empty() => path,
        Some(_) => return false,
        None => value,
    };
    path.ends_with(".git")
}

/// Whether `value` is an `http://` or `https://` URL.
pub fn is_http_url(value: &str) -> bool {
    value.starts_with("http://") || value.starts_with("https://")
}

/// Splits a Git URL into the repository and the `#ref:subdir` fragment (both parts optional).
pub fn parse_git_url(value: &str) -> GitContext {
    let (url, fragment) = value.split_once('#').unwrap_or((value, ""));
    let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
    // `github.com/owner/repo` has no scheme; Docker clones it over HTTPS.
    let url = if url.starts_with("github.com/") {
        format!("https://{url}")
    } else {
        url.to_string()
    };
    let non_empty = |text: &str| (!text.is_empty()).then(|| text.to_string());
    GitContext {
        url,
        reference: non_empty(reference),
        subdir: non_empty(subdir.trim_matches('/')),
    }
}

/// What a context argument (the positional CONTEXT) names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContextArg {
    /// `-`: a tar or a Dockerfile on stdin.
    Stdin,
    Local(PathBuf),
    Remote(RemoteContext),
}

/// Reads the CONTEXT argument as `docker build` does: an existing directory wins, then a Git
/// URL, then an HTTP(S) URL; anything else is a local path (which then fails as not found).
pub fn classify_context(value: &str) -> ContextArg {
    if value == "-" {
        return ContextArg::Stdin;
    }
    if Path::new(value).is_dir() {
        return ContextArg::Local(PathBuf::from(value));
    }
    if is_git_url(value) {
        return ContextArg::Remote(RemoteContext::Git(parse_git_url(value)));
    }
    if is_http_url(value) {
        return ContextArg::Remote(RemoteContext::Http(value.to_string()));
    }
    ContextArg::Local(PathBuf::from(value))
}

/// The value of one `--build-context`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedValue {
    /// `docker-image://REF`.
    Image(String),
    /// `oci-layout://PATH[:TAG|@DIGEST]`.
    OciLayout(crate::oci_layout_context::LayoutRef),
    /// A Git or HTTP(S) URL.
    Remote(RemoteContext),
    /// A local directory.
    Dir(PathBuf),
}

/// Parses `NAME=VALUE` into the name (in its familiar form, as buildx keys it) and the value.
///
/// # Errors
/// [`BuildInputError`] for a missing `=`, a name that is not a valid image name, or a value kiln
/// cannot use (`oci-layout://`, `target:`, an unknown scheme).
pub fn parse_build_context(value: &str) -> Result<(String, NamedValue), BuildInputError> {
    let Some((raw_name, raw_value)) = value.split_once('=') else {
        return Err(BuildInputError::MissingEquals {
            value: value.to_string(),
        });
    };
    let name = familiar_name(raw_name).map_err(|reason| BuildInputError::BadName {
        name: raw_name.to_string(),
        reason,
    })?;
    if name == "context" {
        return Err(BuildInputError::ReservedName { name });
    }
    let unsupported = |reason| BuildInputError::Unsupported {
        name: name.clone(),
        value: raw_value.to_string(),
        reason,
    };
    let parsed = if let Some(reference) = raw_value.strip_prefix("docker-image://") {
        if reference.is_empty() {
            return Err(unsupported("the image reference is empty"));
        }
        NamedValue::Image(reference.to_string())
    } else if let Some(layout) = raw_value.strip_prefix("oci-layout://") {
        if layout.is_empty() {
            return Err(unsupported("the layout path is empty"));
        }
        let layout = crate::oci_layout_context::parse_layout_ref(layout).map_err(|source| {
            BuildInputError::OciLayout {
                name: name.clone(),
                source: Box::new(source),
            }
        })?;
        NamedValue::OciLayout(layout)
    } else if raw_value.starts_with("target:") {
        return Err(unsupported(
            "target: contexts belong to bake files, which kiln does not read",
        ));
    } else if is_git_url(raw_value) {
        NamedValue::Remote(RemoteContext::Git(parse_git_url(raw_value)))
    } else if is_http_url(raw_value) {
        NamedValue::Remote(RemoteContext::Http(raw_value.to_string()))
    } else if raw_value.contains("://") {
        return Err(unsupported(
            "unknown scheme (expected docker-image://, a Git or HTTP(S) URL, or a directory)",
        ));
    } else {
        NamedValue::Dir(PathBuf::from(raw_value))
    };
    Ok((name, parsed))
}

/// The familiar form of an image name without `:latest` (`docker.io/library/alpine:latest` →
/// `alpine`), which is how buildx and BuildKit's Dockerfile frontend key named contexts.
///
/// # Errors
/// The reason when `name` is not a valid image reference.
pub fn familiar_name(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("the name is empty".to_string());
    }
    if name.chars().any(|c| c.is_ascii_uppercase()) {
        return Err("a context name must be lowercase".to_string());
    }
    let normalized = kiln_frontend::lower::normalize_reference(name)?;
    let short = normalized
        .strip_prefix("docker.io/library/")
        .or_else(|| normalized.strip_prefix("docker.io/"))
        .unwrap_or(&normalized);
    Ok(short.strip_suffix(":latest").unwrap_or(short).to_string())
}

/// A fetched remote context: the directory to read, and (for an HTTP URL that was not an
/// archive) the Dockerfile it held.
pub struct FetchedContext {
    pub dir: PathBuf,
    pub dockerfile: Option<String>,
    /// The fetch's result, which keeps the fetched files on disk until the build is done.
    _fetched: Box<OpOutput>,
    /// The unpacked archive of an HTTP context.
    _unpacked: Option<ScratchDir>,
}

/// Fetches `remote` with the solver's Git or HTTP source. With `unpack`, an HTTP download is
/// read as Docker reads a URL context (an archive is unpacked, anything else is the Dockerfile);
/// without, the directory holding the downloaded file is the context.
///
/// # Errors
/// [`BuildInputError`] when the fetch or the unpacking fails.
pub fn fetch_remote(
    store: &Store,
    snapshotter: SnapshotterKind,
    progress: &dyn Progress,
    step_numbers: &Arc<AtomicUsize>,
    remote: &RemoteContext,
    unpack: bool,
) -> Result<FetchedContext, BuildInputError> {
    let url = remote.url().to_string();
    let source = match remote {
        RemoteContext::Git(git) => kiln_llb::SourceOp::Git {
            url: git.url.clone(),
            reference: git.reference.clone(),
            subdir: git.subdir.clone(),
            keep_git_dir: false,
        },
        RemoteContext::Http(url) => kiln_llb::SourceOp::Http {
            url: url.clone(),
            checksum: None,
            filename: None,
        },
    };
    let fetch_error = |source: Box<dyn std::error::Error + Send + Sync>| BuildInputError::Fetch {
        url: url.clone(),
        source,
    };
    let mut builder = kiln_llb::DefinitionBuilder::new();
    let root = builder
        .add(
            kiln_llb::Op::source(source),
            kiln_llb::OpMetadata {
                description: Some(format!("[internal] load remote build context {url}")),
                ..Default::default()
            },
        )
        .map_err(|error| fetch_error(Box::new(error)))?;
    let definition = builder.build();
    let options = SolveOptions {
        snapshotter,
        ..SolveOptions::default()
    };
    let solver = Solver::new(store.clone(), options, progress, None)
        .with_step_numbers(Arc::clone(step_numbers));
    let output = solver
        .solve(&definition, &root)
        .map_err(|error| fetch_error(Box::new(error)))?;
    let OpOutput::Local(local) = &output else {
        return Err(fetch_error("the fetch produced no directory".into()));
    };
    let fetched_dir = local.path.clone();
    let output = Box::new(output);
    if !unpack || matches!(remote, RemoteContext::Git(_)) {
        return Ok(FetchedContext {
            dir: fetched_dir,
            dockerfile: None,
            _fetched: output,
            _unpacked: None,
        });
    }

    // One downloaded file: unpack it, or take it as the Dockerfile.
    let files = fs::read_dir(&fetched_dir)
        .and_then(|entries| entries.map(|entry| entry.map(|e| e.path())).collect())
        .map_err(|source| BuildInputError::Io {
            action: "reading",
            path: fetched_dir.clone(),
            source,
        })?;
    let [download]: [PathBuf; 1] =
        Vec::try_into(files).map_err(|files: Vec<PathBuf>| BuildInputError::DownloadShape {
            url: url.clone(),
            found: files.len(),
        })?;
    let scratch = ScratchDir::new(store, "url-context").map_err(|source| BuildInputError::Io {
        action: "creating a scratch directory in",
        path: store.scratch_dir().to_path_buf(),
        source,
    })?;
    let dir = scratch.path().join("context");
    fs::create_dir_all(&dir).map_err(|source| BuildInputError::Io {
        action: "creating",
        path: dir.clone(),
        source,
    })?;
    let file = fs::File::open(&download).map_err(|source| BuildInputError::Io {
        action: "opening",
        path: download.clone(),
        source,
    })?;
    let read =
        kiln_context::read_stdin_context(io::BufReader::new(file), &dir).map_err(|source| {
            BuildInputError::Unpack {
                url: url.clone(),
                source,
            }
        })?;
    let dockerfile = match read {
        kiln_context::StdinContext::Archive { .. } => None,
        kiln_context::StdinContext::Dockerfile(bytes) => Some(
            String::from_utf8(bytes)
                .map_err(|_| BuildInputError::DockerfileNotUtf8 { url: url.clone() })?,
        ),
    };
    Ok(FetchedContext {
        dir,
        dockerfile,
        _fetched: output,
        _unpacked: Some(scratch),
    })
}

/// The `--build-context` values, ready for lowering and solving.
#[derive(Default)]
pub struct NamedContexts {
    /// What each name stands for, for the frontend.
    pub lowering: BTreeMap<String, NamedContext>,
    /// The Local sources of the directory (and fetched) contexts, by name.
    pub locals: BTreeMap<String, LocalSource>,
    /// Fetched remote contexts, kept on disk for the build.
    _fetched: Vec<FetchedContext>,
}

/// Parses every `--build-context`, checks local directories, reads their own `.dockerignore`,
/// fetches remote ones and imports OCI layout images (for `platform`) into the store.
///
/// # Errors
/// [`BuildInputError`] for the first value that cannot be used.
pub fn prepare_named_contexts(
    values: &[String],
    store: &Store,
    snapshotter: SnapshotterKind,
    progress: &dyn Progress,
    step_numbers: &Arc<AtomicUsize>,
    platform: &kiln_llb::Platform,
) -> Result<NamedContexts, BuildInputError> {
    let mut parsed = BTreeMap::new();
    for value in values {
        let (name, named) = parse_build_context(value)?;
        if parsed.insert(name.clone(), named).is_some() {
            return Err(BuildInputError::Duplicate { name });
        }
    }
    let mut contexts = NamedContexts::default();
    for (name, value) in parsed {
        match value {
            NamedValue::Image(reference) => {
                contexts
                    .lowering
                    .insert(name, NamedContext::Image(reference));
            }
            NamedValue::OciLayout(layout) => {
                let digest =
                    crate::oci_layout_context::import_layout_image(store, &layout, platform)
                        .map_err(|source| BuildInputError::OciLayout {
                            name: name.clone(),
                            source: Box::new(source),
                        })?;
                // Named by digest: the store has the manifest, untagged.
                contexts
                    .lowering
                    .insert(name, NamedContext::Image(format!("oci-layout@{digest}")));
            }
            NamedValue::Dir(path) => {
                check_directory(&name, &path)?;
                let excludes = own_dockerignore(&path)?;
                contexts.locals.insert(
                    name.clone(),
                    LocalSource {
                        dir: path,
                        excludes,
                    },
                );
                contexts.lowering.insert(name, NamedContext::Local);
            }
            NamedValue::Remote(remote) => {
                let fetched =
                    fetch_remote(store, snapshotter, progress, step_numbers, &remote, false)?;
                contexts.locals.insert(
                    name.clone(),
                    LocalSource {
                        dir: fetched.dir.clone(),
                        excludes: Vec::new(),
                    },
                );
                contexts.lowering.insert(name, NamedContext::Local);
                contexts._fetched.push(fetched);
            }
        }
    }
    Ok(contexts)
}

fn check_directory(name: &str, path: &Path) -> Result<(), BuildInputError> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(BuildInputError::NotADirectory {
            name: name.to_string(),
            path: path.to_path_buf(),
        }),
        Err(source) => Err(BuildInputError::Unreadable {
            name: name.to_string(),
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The patterns of `DIR/.dockerignore`, if it has one (BuildKit reads only this file for a named
/// context, never `<Dockerfile>.dockerignore`).
fn own_dockerignore(dir: &Path) -> Result<Vec<String>, BuildInputError> {
    let path = dir.join(".dockerignore");
    match fs::read_to_string(&path) {
        Ok(text) => Ok(kiln_context::read_ignore_lines(&text)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(BuildInputError::ReadIgnore { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_urls_follow_docker() {
        for url in [
            "git://example.com/repo",
            "git@github.com:owner/repo.git",
            "github.com/owner/repo",
            "ssh://git@example.com/repo",
            "https://example.com/repo.git",
            "http://example.com/repo.git#main:sub",
        ] {
            assert!(is_git_url(url), "{url}");
        }
        for url in [
            "https://example.com/context.tar.gz",
            "https://example.com/repo.git#",
            "https://example.com/repo.github",
            "./repo.git",
            "docker-image://alpine",
        ] {
            assert!(!is_git_url(url), "{url}");
        }
    }

    #[test]
    fn git_fragments_name_ref_and_subdir() {
        assert_eq!(
            parse_git_url("https://h/r.git#v1.0:docs/site/"),
            GitContext {
                url: "https://h/r.git".into(),
                reference: Some("v1.0".into()),
                subdir: Some("docs/site".into()),
            }
        );
        assert_eq!(
            parse_git_url("git://h/r#:sub"),
            GitContext {
                url: "git://h/r".into(),
                reference: None,
                subdir: Some("sub".into()),
            }
        );
        assert_eq!(
            parse_git_url("github.com/o/r").url,
            "https://github.com/o/r"
        );
        assert_eq!(
            parse_git_url("git@h:o/r.git#main").reference.as_deref(),
            Some("main")
        );
    }

    #[test]
    fn context_argument_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        assert_eq!(classify_context("-"), ContextArg::Stdin);
        assert_eq!(
            classify_context(path),
            ContextArg::Local(PathBuf::from(path))
        );
        assert!(matches!(
            classify_context("https://h/c.tar"),
            ContextArg::Remote(RemoteContext::Http(_))
        ));
        assert!(matches!(
            classify_context("git://h/r"),
            ContextArg::Remote(RemoteContext::Git(_))
        ));
        assert_eq!(
            classify_context("no/such/dir"),
            ContextArg::Local(PathBuf::from("no/such/dir"))
        );
    }

    #[test]
    fn names_are_familiar_without_latest() {
        assert_eq!(familiar_name("alpine").unwrap(), "alpine");
        assert_eq!(
            familiar_name("docker.io/library/alpine:latest").unwrap(),
            "alpine"
        );
        assert_eq!(familiar_name("alpine:3.20").unwrap(), "alpine:3.20");
        assert_eq!(familiar_name("ghcr.io/o/i:latest").unwrap(), "ghcr.io/o/i");
        assert!(familiar_name("Deps").is_err());
        assert!(familiar_name("").is_err());
    }

    #[test]
    fn build_context_values() {
        assert_eq!(
            parse_build_context("base=docker-image://alpine:3.20").unwrap(),
            ("base".into(), NamedValue::Image("alpine:3.20".into()))
        );
        assert_eq!(
            parse_build_context("deps=../deps").unwrap(),
            ("deps".into(), NamedValue::Dir(PathBuf::from("../deps")))
        );
        assert!(matches!(
            parse_build_context("src=https://h/r.git#main").unwrap().1,
            NamedValue::Remote(RemoteContext::Git(_))
        ));
        assert!(matches!(
            parse_build_context("f=https://h/file.txt").unwrap().1,
            NamedValue::Remote(RemoteContext::Http(_))
        ));
        assert!(matches!(
            parse_build_context("deps"),
            Err(BuildInputError::MissingEquals { .. })
        ));
        assert!(matches!(
            parse_build_context("x=oci-layout:///tmp/l:v1").unwrap().1,
            NamedValue::OciLayout(layout) if layout.tag.as_deref() == Some("v1")
        ));
        assert!(matches!(
            parse_build_context("x=oci-layout://"),
            Err(BuildInputError::Unsupported { .. })
        ));
        assert!(matches!(
            parse_build_context("x=ftp://h/f"),
            Err(BuildInputError::Unsupported { .. })
        ));
        assert!(matches!(
            parse_build_context("context=./x"),
            Err(BuildInputError::ReservedName { .. })
        ));
    }

    #[test]
    fn named_directories_read_their_own_dockerignore() {
        let dir = tempfile::tempdir().unwrap();
        assert!(own_dockerignore(dir.path()).unwrap().is_empty());
        fs::write(dir.path().join(".dockerignore"), "# c\n*.log\n!keep.log\n").unwrap();
        assert_eq!(
            own_dockerignore(dir.path()).unwrap(),
            vec!["*.log".to_string(), "!keep.log".to_string()]
        );
    }
}

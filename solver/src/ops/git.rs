//! Git sources (`ADD https://host/repo.git#ref:subdir`, `ADD git@host:repo.git`): a checkout made
//! with the system's `git` binary in a scratch dir, which a later COPY-like file action copies.
//!
//! The ref (a branch, a tag or a commit; the remote's default branch when none) is fetched
//! shallowly (`--depth=1`); where the server cannot do that (the dumb HTTP protocol, a commit it
//! will not hand out by id) the fetch is repeated in full. Submodules are checked out when the
//! repository has any. The repository itself (`.git`) lives outside the checkout unless
//! `keep_git_dir` asks for it, as BuildKit does, so that a checkout without it carries no Git
//! metadata into the image. The result is identified for the cache by its commit. Git never
//! prompts: a repository that needs credentials the user's git configuration does not supply
//! fails with git's own message. URLs and refs that git could read as options are refused, and
//! submodules get git's default protocol policy (no `file://` submodules).

use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::error::OpError;
use crate::ops::OpContext;
use crate::result::{LocalDir, OpOutput};
use crate::scratch::ScratchDir;

/// Why a checkout failed. The op error around it names the URL and ref.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("the git binary was not found on PATH (install git)")]
    GitMissing,
    #[error("running git {args}: {source}")]
    Spawn {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("git {args} failed ({status}): {stderr}")]
    Failed {
        args: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{what} {value:?} could be read by git as an option or is not a valid name")]
    BadArgument { what: &'static str, value: String },
    #[error("the sub-directory {0:?} is not a relative path inside the repository")]
    BadSubdir(String),
    #[error("the sub-directory {0:?} does not exist in the checkout")]
    MissingSubdir(String),
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What to check out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSpec<'a> {
    pub url: &'a str,
    /// A branch, tag or commit; `None` for the default branch.
    pub reference: Option<&'a str>,
    /// A directory of the repository to use as the result's root.
    pub subdir: Option<&'a str>,
    pub keep_git_dir: bool,
}

/// Runs a Git source op: checks the repository out into a new scratch dir and returns the checkout
/// (or its sub-directory) as the op's output.
///
/// # Errors
/// [`OpError::Io`] with action `fetch` and `<url>#<ref>` as its path, wrapping a [`GitError`].
pub(crate) fn run_git(cx: &OpContext<'_>, spec: &GitSpec<'_>) -> Result<OpOutput, OpError> {
    let what = format!("{}#{}", spec.url, spec.reference.unwrap_or("HEAD"));
    let fetch_error = |error: GitError| OpError::Io {
        action: "fetch",
        path: PathBuf::from(&what),
        source: std::io::Error::other(error),
    };
    let scratch = ScratchDir::new(cx.store, "git").map_err(OpError::io(
        "create a scratch dir in",
        cx.store.scratch_dir(),
    ))?;
    let checkout = checkout(spec, scratch.path()).map_err(fetch_error)?;
    cx.output(format!("checked out {what} at {}", checkout.commit));
    let identity = cache_identity(&checkout.commit, spec);
    Ok(OpOutput::Local(LocalDir {
        name: what.clone(),
        path: checkout.root,
        _staged: Some(Arc::new(scratch)),
        content_identity: Some(identity),
        ignore: None,
    }))
}

/// How a checkout enters the keys of the ops that read it: the commit pins the tree (submodules
/// included), as in BuildKit's key; the URL is left out, so a mirror hits the same cache.
fn cache_identity(commit: &str, spec: &GitSpec<'_>) -> String {
    format!(
        "git:{} subdir={:?} keep_git_dir={}",
        commit.to_ascii_lowercase(),
        spec.subdir.unwrap_or_default(),
        spec.keep_git_dir
    )
}

/// The identity of a checkout whose ref is a full commit id (40 or 64 hex digits), known without
/// asking the remote: a step reading it can then hit the cache with no fetch at all, as BuildKit
/// skips its `ls-remote` for such a ref. `None` for any other ref, or an invalid spec (the op
/// then runs and reports it). A full id can only name one object, so the key stays sound even
/// if it names an annotated tag rather than a commit.
pub(crate) fn pinned_identity(spec: &GitSpec<'_>) -> Option<String> {
    let reference = spec.reference?;
    let full_id = matches!(reference.len(), 40 | 64) && looks_like_commit(reference);
    let valid = check_argument("the repository URL", spec.url).is_ok()
        && spec.subdir.map(clean_subdir).transpose().is_ok();
    (full_id && valid).then(|| cache_identity(reference, spec))
}

/// A finished checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkout {
    /// The directory to copy from (the work tree, or its sub-directory).
    pub root: PathBuf,
    /// The full id of the checked-out commit.
    pub commit: String,
}

/// Checks `spec` out under `work` (an empty directory).
///
/// # Errors
/// [`GitError`] when git is missing or fails, or the sub-directory is invalid or absent.
pub fn checkout(spec: &GitSpec<'_>, work: &Path) -> Result<Checkout, GitError> {
    let subdir = spec.subdir.map(clean_subdir).transpose()?;
    check_argument("the repository URL", spec.url)?;
    if let Some(reference) = spec.reference {
        check_argument("the ref", reference)?;
    }
    let tree = work.join("checkout");
    std::fs::create_dir_all(&tree).map_err(io("create", &tree))?;
    let git_dir = if spec.keep_git_dir {
        tree.join(".git")
    } else {
        work.join("repo.git")
    };
    let git = Git {
        git_dir: git_dir.clone(),
        tree: tree.clone(),
    };
    git.run(&["init", "--quiet"])?;
    git.run(&["remote", "add", "origin", spec.url])?;

    let wanted = spec.reference.unwrap_or("HEAD");
    let shallow = git.run(&[
        "fetch",
        "--quiet",
        "--depth=1",
        "--no-tags",
        "origin",
        wanted,
    ]);
    let commit = match shallow {
        Ok(_) => git.run(&["rev-parse", "--verify", "FETCH_HEAD^{commit}"])?,
        Err(error) => {
            // Some servers cannot serve a shallow fetch (the dumb HTTP protocol) or an
            // unadvertised commit by id: fetch in full, and look a commit up locally.
            tracing::debug!(%error, "shallow fetch failed; fetching in full");
            if looks_like_commit(wanted) {
                git.run(&[
                    "fetch",
                    "--quiet",
                    "--tags",
                    "origin",
                    "+refs/heads/*:refs/remotes/origin/*",
                ])?;
                git.run(&["rev-parse", "--verify", &format!("{wanted}^{{commit}}")])?
            } else {
                git.run(&["fetch", "--quiet", "--no-tags", "origin", wanted])?;
                git.run(&["rev-parse", "--verify", "FETCH_HEAD^{commit}"])?
            }
        }
    };
    let commit = commit.trim().to_string();
    git.run(&["checkout", "--quiet", "--force", "--detach", &commit])?;
    if tree.join(".gitmodules").exists() {
        git.run(&[
            "submodule",
            "update",
            "--quiet",
            "--init",
            "--recursive",
            "--depth=1",
        ])?;
        if !spec.keep_git_dir {
            // Each submodule's work tree got a `.git` file pointing into `repo.git`, which is
            // not part of the result.
            remove_gitlinks(&tree)?;
        }
    }
    let root = match subdir {
        Some(subdir) => {
            let path = tree.join(&subdir);
            if !path.is_dir() {
                return Err(GitError::MissingSubdir(subdir.display().to_string()));
            }
            path
        }
        None => tree,
    };
    Ok(Checkout { root, commit })
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> GitError {
    let path = path.to_path_buf();
    move |source| GitError::Io {
        action,
        path,
        source,
    }
}

/// Removes the `.git` files (links to a separate repository) below `dir`. Git never tracks a
/// path named `.git`, so every one of them was made by the checkout.
fn remove_gitlinks(dir: &Path) -> Result<(), GitError> {
    for entry in std::fs::read_dir(dir).map_err(io("read", dir))? {
        let entry = entry.map_err(io("read", dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io("inspect", &path))?;
        if kind.is_dir() {
            remove_gitlinks(&path)?;
        } else if entry.file_name() == ".git" {
            std::fs::remove_file(&path).map_err(io("remove", &path))?;
        }
    }
    Ok(())
}

/// Refuses a URL or ref that git would take for an option (`--upload-pack=…` runs a command) or
/// that holds whitespace, control characters or a refspec's `:`.
fn check_argument(what: &'static str, value: &str) -> Result<(), GitError> {
    let bad = value.is_empty()
        || value.starts_with('-')
        || value.chars().any(char::is_control)
        || (what == "the ref" && value.contains([':', ' ']));
    if bad {
        return Err(GitError::BadArgument {
            what,
            value: value.to_string(),
        });
    }
    Ok(())
}

/// A full or abbreviated commit id (at least 7 hex digits, as git abbreviates).
fn looks_like_commit(reference: &str) -> bool {
    (7..=64).contains(&reference.len()) && reference.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `subdir` as a relative path with no `..`, or an error.
fn clean_subdir(subdir: &str) -> Result<PathBuf, GitError> {
    let mut clean = PathBuf::new();
    for component in Path::new(subdir).components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(GitError::BadSubdir(subdir.to_string()));
            }
        }
    }
    Ok(clean)
}

/// git commands on one repository and work tree.
struct Git {
    git_dir: PathBuf,
    tree: PathBuf,
}

impl Git {
    /// Runs `git <args>` and returns its stdout.
    fn run(&self, args: &[&str]) -> Result<String, GitError> {
        let shown = args.join(" ");
        let mut command = Command::new("git");
        if std::env::var_os("GIT_SSH_COMMAND").is_none() {
            // No ssh host-key or password prompts: fail instead of hanging the build.
            command.env("GIT_SSH_COMMAND", "ssh -o BatchMode=yes");
        }
        let output = command
            .arg("--git-dir")
            .arg(&self.git_dir)
            .arg("--work-tree")
            .arg(&self.tree)
            .args(args.iter().map(OsStr::new))
            .current_dir(&self.tree)
            .env("GIT_TERMINAL_PROMPT", "0")
            // An HTTP transfer stalled (under 1 byte/s) for a minute fails instead of hanging.
            .env("GIT_HTTP_LOW_SPEED_LIMIT", "1")
            .env("GIT_HTTP_LOW_SPEED_TIME", "60")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    GitError::GitMissing
                } else {
                    GitError::Spawn {
                        args: shown.clone(),
                        source,
                    }
                }
            })?;
        if !output.status.success() {
            return Err(GitError::Failed {
                args: shown,
                status: output.status,
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subdirs_stay_inside_the_repository() {
        assert_eq!(clean_subdir("docs/api").unwrap(), PathBuf::from("docs/api"));
        assert_eq!(clean_subdir("/docs/./x").unwrap(), PathBuf::from("docs/x"));
        assert!(clean_subdir("../etc").is_err());
        assert!(clean_subdir("a/../../b").is_err());
    }

    #[test]
    fn refs_and_urls_that_git_would_read_as_options_are_refused() {
        assert!(check_argument("the ref", "v1.0").is_ok());
        assert!(check_argument("the ref", "refs/pull/1/head").is_ok());
        assert!(check_argument("the repository URL", "git@github.com:a/b.git").is_ok());
        for bad in ["--upload-pack=touch /tmp/x", "-h", "a:b", "a b", "a\nb", ""] {
            assert!(check_argument("the ref", bad).is_err(), "{bad:?}");
        }
        assert!(check_argument("the repository URL", "--upload-pack=x").is_err());
        // Refused before git runs at all.
        let spec = GitSpec {
            url: "git://127.0.0.1:1/x.git",
            reference: Some("--upload-pack=false"),
            subdir: None,
            keep_git_dir: false,
        };
        let work = tempfile::tempdir().unwrap();
        assert!(matches!(
            checkout(&spec, work.path()),
            Err(GitError::BadArgument { .. })
        ));
        assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
    }

    #[test]
    fn only_a_full_commit_id_pins_the_identity_before_fetching() {
        let spec = |reference: Option<&'static str>| GitSpec {
            url: "https://example.com/repo.git",
            reference,
            subdir: Some("docs"),
            keep_git_dir: false,
        };
        let full = "0123456789ABCDEF0123456789abcdef01234567";
        assert_eq!(
            pinned_identity(&spec(Some(full))),
            Some(cache_identity(&full.to_ascii_lowercase(), &spec(None)))
        );
        assert!(pinned_identity(&spec(Some(&full[..64 / 2]))).is_none());
        assert!(pinned_identity(&spec(Some("main"))).is_none());
        assert!(pinned_identity(&spec(None)).is_none());
        let escaping = GitSpec {
            subdir: Some("../x"),
            ..spec(Some(full))
        };
        assert!(pinned_identity(&escaping).is_none());
    }

    #[test]
    fn commit_ids_are_recognised_by_shape() {
        assert!(looks_like_commit("0123abc"));
        assert!(looks_like_commit(&"f".repeat(40)));
        assert!(!looks_like_commit("main"));
        assert!(!looks_like_commit("v1.0"));
        assert!(!looks_like_commit("abc"));
    }
}

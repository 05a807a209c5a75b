//! Which ignore file applies to a build, and loading it.
//!
//! BuildKit's rule: `<Dockerfile name>.dockerignore` next to the Dockerfile (e.g.
//! `Dockerfile2.dockerignore`) replaces `<context>/.dockerignore` for that Dockerfile. With the
//! Dockerfile on stdin only the context's file counts. The Dockerfile and the ignore file are read
//! by path, never through the filtered context, so they are always readable for the build even
//! when the patterns exclude them — and, as with BuildKit, then absent from what COPY sees.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::dockerignore::{IgnorePatterns, PatternError};

/// Name of the context-wide ignore file.
pub const CONTEXT_IGNORE_FILE: &str = ".dockerignore";

/// Why the ignore file could not be loaded.
#[derive(Debug, Error)]
pub enum IgnoreFileError {
    /// The file exists but cannot be read.
    #[error("read {path}: {source}")]
    Read {
        /// The ignore file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file holds an invalid pattern; the build must fail.
    #[error("{path}: {source}")]
    Invalid {
        /// The ignore file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: PatternError,
    },
}

/// The ignore patterns that apply to a build context, and where they came from.
#[derive(Debug, Clone, Default)]
pub struct ContextIgnore {
    /// The file the patterns were read from; `None` when there is none (nothing is excluded).
    pub file: Option<PathBuf>,
    /// The compiled patterns.
    pub patterns: IgnorePatterns,
}

/// The candidate ignore files for a build, most specific first: `<dockerfile>.dockerignore`
/// beside the Dockerfile (when a Dockerfile path is given), then `<context>/.dockerignore`.
pub fn ignore_file_candidates(context_dir: &Path, dockerfile: Option<&Path>) -> Vec<PathBuf> {
    let mut candidates = Vec::with_capacity(2);
    if let Some((dockerfile, name)) = dockerfile.and_then(|d| Some((d, d.file_name()?))) {
        let mut ignore_name = name.to_owned();
        ignore_name.push(".dockerignore");
        candidates.push(dockerfile.with_file_name(ignore_name));
    }
    candidates.push(context_dir.join(CONTEXT_IGNORE_FILE));
    candidates
}

/// Finds and compiles the ignore file for a build (see the module docs for the precedence).
///
/// # Errors
/// [`IgnoreFileError::Read`] when an ignore file exists but cannot be read,
/// [`IgnoreFileError::Invalid`] when it contains an invalid pattern (e.g. a lone `!`).
pub fn load_context_ignore(
    context_dir: &Path,
    dockerfile: Option<&Path>,
) -> Result<ContextIgnore, IgnoreFileError> {
    for candidate in ignore_file_candidates(context_dir, dockerfile) {
        let bytes = match fs::read(&candidate) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(IgnoreFileError::Read {
                    path: candidate,
                    source,
                });
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        let patterns = IgnorePatterns::parse(&text).map_err(|source| IgnoreFileError::Invalid {
            path: candidate.clone(),
            source,
        })?;
        return Ok(ContextIgnore {
            file: Some(candidate),
            patterns,
        });
    }
    Ok(ContextIgnore::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_specific_file_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(".dockerignore"), "a\n").expect("write");
        fs::write(dir.path().join("Dockerfile.dockerignore"), "b\n").expect("write");
        let dockerfile = dir.path().join("Dockerfile");
        let loaded = load_context_ignore(dir.path(), Some(&dockerfile)).expect("load");
        assert_eq!(
            loaded.file,
            Some(dir.path().join("Dockerfile.dockerignore"))
        );
        assert!(loaded.patterns.matches("b") && !loaded.patterns.matches("a"));
        // Another Dockerfile without its own file falls back to the context's.
        let other = dir.path().join("Other");
        let loaded = load_context_ignore(dir.path(), Some(&other)).expect("load");
        assert!(loaded.patterns.matches("a"));
        // Dockerfile from stdin: context file only.
        let loaded = load_context_ignore(dir.path(), None).expect("load");
        assert!(loaded.patterns.matches("a"));
    }

    #[test]
    fn no_file_means_nothing_excluded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let loaded = load_context_ignore(dir.path(), None).expect("load");
        assert!(loaded.file.is_none() && loaded.patterns.is_empty());
    }

    #[test]
    fn invalid_file_names_itself() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(".dockerignore"), "!\n").expect("write");
        let err = load_context_ignore(dir.path(), None).expect_err("invalid");
        assert!(err.to_string().contains(".dockerignore"), "{err}");
    }
}

//! Path patterns, delegated to `kiln-context` so that COPY and the context walk share one set of
//! rules: source wildcards use Go's `filepath.Match` (what BuildKit uses to expand `COPY *.txt`;
//! `*` and `?` never cross `/`), and `--exclude` / `--parents` patterns use Docker's pattern-matcher
//! rules (the `.dockerignore` syntax: `**`, `!` exceptions, a pattern matching a directory matches
//! everything below it, the last matching pattern decides).

use kiln_context::IgnorePatterns;
use kiln_context::glob::{contains_wildcards, go_match};

use crate::error::{FileOpError, Result};

/// Whether `component` contains an unescaped wildcard character (`*`, `?`, `[`).
pub fn has_wildcards(component: &str) -> bool {
    contains_wildcards(component)
}

/// Matches `name` against a Go `filepath.Match` pattern.
///
/// # Errors
/// [`FileOpError::InvalidPattern`] for a malformed pattern (unclosed `[`, trailing `\`, …).
pub fn glob_match(pattern: &str, name: &str) -> Result<bool> {
    go_match(pattern, name).map_err(|e| FileOpError::InvalidPattern {
        pattern: pattern.to_string(),
        reason: e.to_string(),
    })
}

/// A list of Docker-style patterns (`.dockerignore` syntax).
#[derive(Debug, Default)]
pub struct PatternSet {
    patterns: IgnorePatterns,
    /// Per plain pattern, its leading components without wildcards (which directories can hold
    /// matches).
    literal_prefixes: Vec<Vec<String>>,
}

impl PatternSet {
    /// Compiles `patterns`; blank ones are ignored.
    ///
    /// # Errors
    /// [`FileOpError::InvalidPattern`] for a lone `!` or a malformed pattern.
    pub fn new(patterns: &[String]) -> Result<PatternSet> {
        let compiled =
            IgnorePatterns::compile(patterns).map_err(|e| FileOpError::InvalidPattern {
                pattern: patterns.join(" "),
                reason: e.to_string(),
            })?;
        let literal_prefixes = compiled
            .patterns()
            .iter()
            .filter(|p| !p.is_exception())
            .map(|p| {
                p.as_str()
                    .split('/')
                    .take_while(|c| !has_wildcards(c))
                    .map(str::to_string)
                    .collect()
            })
            .collect();
        Ok(PatternSet {
            patterns: compiled,
            literal_prefixes,
        })
    }

    /// True when there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// For a matched directory: could a `!` exception re-include something below it?
    pub fn may_reinclude_below(&self, dir: &str) -> bool {
        self.patterns.may_reinclude_below(dir)
    }

    /// Whether some plain pattern could match an entry below directory `dir`: its literal leading
    /// components agree with `dir`'s as far as both go.
    pub fn could_match_below(&self, dir: &str) -> bool {
        let components: Vec<&str> = dir.split('/').filter(|c| !c.is_empty()).collect();
        self.literal_prefixes
            .iter()
            .any(|prefix| prefix.iter().zip(components.iter()).all(|(a, b)| a == b))
    }

    /// Whether the `/`-separated relative `path` is matched (by a pattern matching it or one of
    /// its parent directories; the last matching pattern decides).
    pub fn matches(&self, path: &str) -> bool {
        self.patterns.matches(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_star_does_not_cross_slash() {
        assert!(glob_match("*.txt", "a.txt").unwrap());
        assert!(!glob_match("*.txt", "d/a.txt").unwrap());
        assert!(glob_match("d/*/c", "d/x/c").unwrap());
        assert!(glob_match("file[^0-9]", "filex").unwrap());
        assert!(!glob_match("file[^0-9]", "file7").unwrap());
        assert!(glob_match("a\\*b", "a*b").unwrap());
        assert!(glob_match("[", "x").is_err());
    }

    #[test]
    fn docker_patterns_follow_dockerignore_rules() {
        let set = PatternSet::new(&[
            "*.md".into(),
            "!README.md".into(),
            "build/**".into(),
            "**/*.log".into(),
        ])
        .unwrap();
        assert!(set.matches("notes.md"));
        assert!(!set.matches("README.md"));
        assert!(!set.matches("docs/notes.md"));
        assert!(set.matches("build/x/y"));
        assert!(set.matches("a/b/c.log"));
        assert!(set.matches("vendor/x.log"));
    }

    #[test]
    fn could_match_below_follows_literal_prefix() {
        let set = PatternSet::new(&["src/app/*.go".into()]).unwrap();
        assert!(set.could_match_below("src"));
        assert!(set.could_match_below("src/app"));
        assert!(!set.could_match_below("vendor"));
        assert!(!set.could_match_below("src/lib"));
    }
}

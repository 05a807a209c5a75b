//! `.dockerignore` files: reading them (docker/cli + moby `ignorefile` rules) and matching paths
//! against them (moby `patternmatcher` rules, as used by BuildKit to filter the build context).
//!
//! Reading: a UTF-8 BOM is dropped; a line whose *first* character is `#` is a comment (checked
//! before trimming); lines are trimmed and blank ones skipped; `!` marks an exception and the
//! whitespace after it is trimmed too; the rest is path-cleaned and one leading `/` removed.
//!
//! Matching: patterns are anchored at the context root, `*`/`?` never cross `/`, `**` spans any
//! number of directories, and a path is matched when the pattern matches the path *or any of its
//! parent directories*. Patterns apply top to bottom and the last one that matches decides;
//! exceptions are only consulted while the path is excluded, plain patterns only while it is
//! included. Every pattern is compiled up front, so a bad pattern fails [`IgnorePatterns::parse`]
//! instead of failing later in the middle of a walk (Docker defers some of these errors to the
//! first match; the outcome, a failed build, is the same).
//!
//! Docker translates patterns to Go regexes; we translate to Rust regexes and agree on every
//! upstream test row. Known differences, all in patterns nobody writes on purpose: a `\` before
//! a letter is that letter (Docker's regex reads `\d` as "a digit"), and `*`/`?` inside `[...]`
//! are plain members (Docker's translation turns them into a broken nested class).

use regex::Regex;
use thiserror::Error;

use crate::glob::{self, clean_path};

/// Why a pattern list was rejected.
#[derive(Debug, Error)]
pub enum PatternError {
    /// A lone `!` (an exception with no pattern).
    #[error("illegal exclusion pattern: \"!\"")]
    LoneExclamation,
    /// The pattern is not valid `filepath.Match` syntax.
    #[error("invalid .dockerignore pattern {pattern:?}: syntax error in pattern")]
    Syntax {
        /// The pattern as written (after cleaning).
        pattern: String,
    },
    /// The pattern passed the syntax check but cannot be compiled (e.g. a reversed range `l-O`).
    #[error("invalid .dockerignore pattern {pattern:?}: {reason}")]
    Compile {
        /// The pattern as written (after cleaning).
        pattern: String,
        /// What the regex compiler said.
        reason: String,
    },
}

/// Splits the text of a `.dockerignore` file into pattern lines (Docker's `ReadAll` rules).
///
/// The result still contains every pattern as Docker would pass it on, including a lone `!`
/// (rejected only when compiled).
pub fn read_ignore_lines(text: &str) -> Vec<String> {
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let mut patterns = Vec::new();
    for raw in text.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if let Some(pattern) = normalize_line(line) {
            patterns.push(pattern);
        }
    }
    patterns
}

/// Applies the per-line reading rules to one line; `None` for comments and blank lines.
fn normalize_line(line: &str) -> Option<String> {
    if line.starts_with('#') {
        return None;
    }
    let mut pattern = line.trim();
    if pattern.is_empty() {
        return None;
    }
    let exception = pattern.starts_with('!');
    if exception {
        pattern = pattern[1..].trim();
    }
    let mut normalized = String::new();
    if !pattern.is_empty() {
        let cleaned = clean_path(pattern);
        normalized = match cleaned.strip_prefix('/') {
            Some(rest) if !rest.is_empty() => rest.to_owned(),
            _ => cleaned,
        };
    }
    Some(if exception {
        format!("!{normalized}")
    } else {
        normalized
    })
}

/// How one compiled pattern decides a match (Docker's fast paths, which define its semantics:
/// e.g. `**foo` is a plain suffix test).
#[derive(Debug, Clone)]
enum Matcher {
    /// No wildcard at all: the path must equal the pattern.
    Exact(String),
    /// `prefix**`: the path must start with the prefix.
    Prefix(String),
    /// `**suffix` with a wildcard-free suffix: the path ends with it (or, for `**/x`, is `x`).
    Suffix(String),
    /// Everything else, translated to an anchored regex.
    Regex(Regex),
}

/// One compiled `.dockerignore` line.
#[derive(Debug, Clone)]
pub struct Pattern {
    text: String,
    exception: bool,
    matcher: Matcher,
}

impl Pattern {
    /// The cleaned pattern without its leading `!`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True for `!` exceptions (re-includes).
    pub fn is_exception(&self) -> bool {
        self.exception
    }

    /// Whether this pattern matches exactly `path` (no parent rule).
    fn matches_exactly(&self, path: &str) -> bool {
        match &self.matcher {
            Matcher::Exact(text) => path == text,
            Matcher::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Matcher::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|bare| path == bare)
            }
            Matcher::Regex(regex) => regex.is_match(path),
        }
    }

    /// Whether this pattern matches `path` or one of its parent directories.
    fn matches_or_parent(&self, path: &str, parents: &[String]) -> bool {
        self.matches_exactly(path) || parents.iter().any(|parent| self.matches_exactly(parent))
    }

    /// The pattern without a trailing `/**` or `/*` (what could be re-included below a dir).
    fn without_trailing_glob(&self) -> &str {
        let text = self.text.as_str();
        let text = text.strip_suffix("/**").unwrap_or(text);
        text.strip_suffix("/*").unwrap_or(text)
    }
}

/// A compiled `.dockerignore` pattern list.
#[derive(Debug, Clone, Default)]
pub struct IgnorePatterns {
    patterns: Vec<Pattern>,
}

impl IgnorePatterns {
    /// No patterns: nothing is excluded.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Reads and compiles the text of a `.dockerignore` file.
    ///
    /// # Errors
    /// [`PatternError`] for a lone `!` or a malformed pattern.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        Self::compile(&read_ignore_lines(text))
    }

    /// Compiles patterns that were already read (one `.dockerignore` line each, or
    /// `COPY --exclude` values), with Docker's matcher rules: trim, clean, `!` prefix.
    ///
    /// # Errors
    /// [`PatternError`] for a lone `!` or a malformed pattern.
    pub fn compile<S: AsRef<str>>(patterns: &[S]) -> Result<Self, PatternError> {
        let mut compiled = Vec::with_capacity(patterns.len());
        for raw in patterns {
            let trimmed = raw.as_ref().trim();
            if trimmed.is_empty() {
                continue;
            }
            let cleaned = clean_path(trimmed);
            let (exception, text) = match cleaned.strip_prefix('!') {
                Some("") => return Err(PatternError::LoneExclamation),
                Some(rest) => (true, rest.to_owned()),
                None => (false, cleaned),
            };
            glob::check_syntax(&text).map_err(|_| PatternError::Syntax {
                pattern: text.clone(),
            })?;
            let matcher = translate(&text)?;
            compiled.push(Pattern {
                text,
                exception,
                matcher,
            });
        }
        Ok(Self { patterns: compiled })
    }

    /// The compiled patterns in file order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// True when there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// True when some pattern is an exception (`!...`).
    pub fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(Pattern::is_exception)
    }

    /// Whether `path` (relative to the context root, `/`-separated) is excluded: the last
    /// pattern matching it or one of its parents decides. The root (`.` or empty) never is.
    pub fn matches(&self, path: &str) -> bool {
        if path.is_empty() || path == "." || self.patterns.is_empty() {
            return false;
        }
        let parents = parent_dirs(path);
        let mut excluded = false;
        for pattern in &self.patterns {
            // Exceptions only matter while excluded, plain patterns only while included.
            if pattern.exception != excluded {
                continue;
            }
            if pattern.matches_or_parent(path, &parents) {
                excluded = !pattern.exception;
            }
        }
        excluded
    }

    /// For an excluded directory: could an exception re-include something below it, so that a
    /// walk must still descend? Mirrors BuildKit's context filter: when every exception is a
    /// plain path (no wildcard before an optional trailing `/*` or `/**`) only exceptions under
    /// `dir/` count; with a wildcard exception anything might match, so always descend.
    pub fn may_reinclude_below(&self, dir: &str) -> bool {
        let exceptions: Vec<&Pattern> = self.patterns.iter().filter(|p| p.exception).collect();
        if exceptions.is_empty() {
            return false;
        }
        let has_wildcard = exceptions.iter().any(|p| {
            p.without_trailing_glob()
                .contains(['*', '[', ']', '?', '^', '\\'])
        });
        if has_wildcard {
            return true;
        }
        let dir_slash = format!("{dir}/");
        exceptions
            .iter()
            .any(|p| format!("{}/", p.without_trailing_glob()).starts_with(&dir_slash))
    }
}

/// All parent directories of a `/`-separated path, shortest first (`a`, `a/b` for `a/b/c`),
/// computed like Docker does on the raw string: the parent is the cleaned text before the last
/// `/` (so `dir/file/` has parents `dir` and `dir/file`), split at every `/`.
fn parent_dirs(path: &str) -> Vec<String> {
    let Some(last_slash) = path.rfind('/') else {
        return Vec::new();
    };
    let parent = clean_path(&path[..=last_slash]);
    if parent == "." {
        return Vec::new();
    }
    let mut parents: Vec<String> = parent
        .match_indices('/')
        .map(|(index, _)| parent[..index].to_owned())
        .collect();
    parents.push(parent);
    parents
}

/// Translates a cleaned pattern into Docker's match strategy (exact, prefix, suffix or regex).
fn translate(pattern: &str) -> Result<Matcher, PatternError> {
    #[derive(PartialEq)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let mut regex = String::from("^");
    let mut kind = Kind::Exact;
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    let mut in_class = false;
    while i < chars.len() {
        let ch = chars[i];
        let first = i == 0;
        i += 1;
        if in_class {
            // Inside `[...]`: members are literal; `]` closes (it can never open a class here,
            // the syntax check rejects `[]`), `^` right after `[` negates, `-` forms ranges.
            match ch {
                ']' => {
                    regex.push(']');
                    in_class = false;
                }
                '\\' => {
                    if let Some(next) = chars.get(i) {
                        push_class_literal(&mut regex, *next);
                        i += 1;
                    }
                }
                '-' | '^' => regex.push(ch),
                other => push_class_literal(&mut regex, other),
            }
            continue;
        }
        match ch {
            '*' => {
                if chars.get(i) == Some(&'*') {
                    i += 1;
                    if chars.get(i) == Some(&'/') {
                        i += 1;
                    }
                    if i >= chars.len() {
                        // Trailing `**` matches everything below.
                        if kind == Kind::Exact {
                            kind = Kind::Prefix;
                        } else {
                            regex.push_str(".*");
                            kind = Kind::Regex;
                        }
                    } else {
                        regex.push_str("(?:.*/)?");
                        kind = Kind::Regex;
                    }
                    if first {
                        kind = Kind::Suffix;
                    }
                } else {
                    regex.push_str("[^/]*");
                    kind = Kind::Regex;
                }
            }
            '?' => {
                regex.push_str("[^/]");
                kind = Kind::Regex;
            }
            '\\' => {
                match chars.get(i) {
                    Some(next) => {
                        regex.push_str(&regex::escape(&next.to_string()));
                        i += 1;
                    }
                    None => regex.push_str("\\\\"),
                }
                kind = Kind::Regex;
            }
            '[' => {
                regex.push('[');
                in_class = true;
                kind = Kind::Regex;
            }
            ']' => {
                regex.push_str("\\]");
                kind = Kind::Regex;
            }
            // Docker passes `^` straight into the regex, where it is an anchor.
            '^' => regex.push('^'),
            other => regex.push_str(&regex::escape(&other.to_string())),
        }
    }
    Ok(match kind {
        Kind::Exact => Matcher::Exact(pattern.to_owned()),
        Kind::Prefix => Matcher::Prefix(pattern[..pattern.len() - 2].to_owned()),
        Kind::Suffix => Matcher::Suffix(pattern[2..].to_owned()),
        Kind::Regex => {
            regex.push('$');
            let compiled = Regex::new(&regex).map_err(|err| PatternError::Compile {
                pattern: pattern.to_owned(),
                reason: err.to_string(),
            })?;
            Matcher::Regex(compiled)
        }
    })
}

/// Pushes one literal class member. ASCII punctuation is written as a hex escape: Rust's class
/// syntax gives meaning to some of it (`[` nesting, `&&`/`--`/`~~` set operations) and rejects
/// some backslash escapes (`\<`), while Go's treats all of it as plain members.
fn push_class_literal(regex: &mut String, ch: char) {
    if ch.is_ascii_punctuation() {
        regex.push_str(&format!("\\x{{{:X}}}", u32::from(ch)));
    } else {
        regex.push(ch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_file_like_docker() {
        let lines = read_ignore_lines("\u{FEFF}a\r\n # b\n#c\n\n  ! ./d/ \n/e\n!\n");
        assert_eq!(lines, vec!["a", "# b", "!d", "e", "!"]);
    }

    #[test]
    fn lone_exclamation_is_rejected() {
        assert!(matches!(
            IgnorePatterns::parse("!\n"),
            Err(PatternError::LoneExclamation)
        ));
    }

    #[test]
    fn reversed_range_is_rejected_up_front() {
        assert!(matches!(
            IgnorePatterns::parse("[Local-Only]/"),
            Err(PatternError::Compile { .. })
        ));
    }

    #[test]
    fn suffix_fast_path_matches_like_docker() {
        let patterns = IgnorePatterns::parse("**file").expect("valid");
        assert!(patterns.matches("file"));
        assert!(patterns.matches("dir/file"));
        // Docker's suffix test has no component boundary.
        assert!(patterns.matches("xfile"));
    }

    #[test]
    fn class_members_that_are_special_to_rust_regex_stay_literal() {
        for (pattern, yes, no) in [
            ("a[&~]b", "a&b", "a-b"),
            ("a[<>]b", "a<b", "a=b"),
            ("a[[]b", "a[b", "a]b"),
            ("x[*?]", "x*", "xx"),
            ("a<b", "a<b", "ab"),
            ("a^b", "a^b", "ab"),
            ("[^/]x", "ax", "/x"),
        ] {
            let patterns = IgnorePatterns::parse(pattern).expect(pattern);
            assert!(patterns.matches(yes), "{pattern} must match {yes}");
            assert!(!patterns.matches(no), "{pattern} must not match {no}");
        }
    }

    #[test]
    fn parent_dirs_of_raw_paths() {
        assert_eq!(parent_dirs("a/b/c"), vec!["a", "a/b"]);
        assert_eq!(parent_dirs("dir/file/"), vec!["dir", "dir/file"]);
        assert_eq!(parent_dirs("a"), Vec::<String>::new());
        assert_eq!(parent_dirs("/"), vec!["", "/"]);
    }

    #[test]
    fn reinclude_below_prefix_and_wildcards() {
        let plain = IgnorePatterns::parse("foo\n!foo/bar/baz\n").expect("valid");
        assert!(plain.may_reinclude_below("foo"));
        assert!(plain.may_reinclude_below("foo/bar"));
        assert!(!plain.may_reinclude_below("other"));
        let wild = IgnorePatterns::parse("foo\n!**/*.md\n").expect("valid");
        assert!(wild.may_reinclude_below("anything"));
        let none = IgnorePatterns::parse("foo\n").expect("valid");
        assert!(!none.may_reinclude_below("foo"));
    }

    mod agreement_with_filepath_match {
        use super::*;
        use proptest::prelude::*;

        fn component(tokens: &'static [&'static str]) -> impl Strategy<Value = String> {
            prop::collection::vec(prop::sample::select(tokens), 1..4).prop_map(|t| t.concat())
        }

        fn joined(parts: Vec<String>) -> String {
            parts.join("/")
        }

        proptest! {
            /// Without `**`, a pattern excludes a path exactly when Go's `filepath.Match` matches
            /// the path or one of its parents: two independent implementations must agree.
            #[test]
            fn regex_translation_agrees(
                pattern in prop::collection::vec(
                    component(&["a", "b", ".", "*", "?", "[ab]", "[^a]", "\\*", "[a-b]"]), 1..4
                ).prop_map(joined),
                path in prop::collection::vec(component(&["a", "b", "*", "."]), 1..5)
                    .prop_map(joined),
            ) {
                let path = clean_path(&path);
                prop_assume!(path != "." && !path.starts_with(".."));
                let cleaned = clean_path(&pattern);
                // Adjacent `*` tokens make `**`, which Docker gives its own meaning (any number of
                // directories); `filepath.Match` has no such rule, so those patterns are out of scope.
                prop_assume!(!cleaned.contains("**"));
                let compiled = IgnorePatterns::compile(&[pattern.as_str()]).expect("valid pattern");
                let mut candidates = parent_dirs(&path);
                candidates.push(path.clone());
                let expected = candidates
                    .iter()
                    .any(|candidate| glob::go_match(&cleaned, candidate).expect("valid"));
                prop_assert_eq!(compiled.matches(&path), expected, "pattern {:?} path {:?}", cleaned, path);
            }
        }
    }
}

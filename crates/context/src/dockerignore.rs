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
    /// The text every path this pattern matches starts with: the pattern up to its first special
    /// character (all of it for an exact pattern). Lets a walk skip the pattern below
    /// directories where no path can start with it.
    literal_prefix: String,
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

    /// Whether this pattern could match some path below the directory `dir` (root-relative,
    /// cleaned; `""` is the root): such a path starts with `dir/`, and every match starts with
    /// the literal prefix, so one must be a prefix of the other.
    fn may_match_below(&self, dir: &str) -> bool {
        let literal = self.literal_prefix.as_str();
        if dir.is_empty() {
            return true;
        }
        if literal.len() <= dir.len() {
            // An exact pattern matches only itself, which is not below `dir`.
            if matches!(self.matcher, Matcher::Exact(_)) {
                return false;
            }
            return dir.starts_with(literal);
        }
        literal.starts_with(dir) && literal.as_bytes()[dir.len()] == b'/'
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
            let literal_prefix = match matcher {
                Matcher::Exact(_) => text.clone(),
                // Up to the first character the regex translation gives a meaning to.
                _ => text
                    .split(['*', '?', '[', ']', '\\', '^'])
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            };
            compiled.push(Pattern {
                text,
                exception,
                matcher,
                literal_prefix,
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
        if is_clean_relative(path) {
            // The parents are the text before each `/`: no need to compute them.
            return self.decide(|_, pattern| {
                pattern.matches_exactly(path)
                    || path
                        .match_indices('/')
                        .any(|(end, _)| pattern.matches_exactly(&path[..end]))
            });
        }
        let parents = parent_dirs(path);
        self.decide(|_, pattern| pattern.matches_or_parent(path, &parents))
    }

    /// Docker's decision loop: patterns apply in order and the last matching one decides;
    /// exceptions only matter while excluded, plain patterns only while included (so `matches`
    /// is asked only about the patterns that can change the outcome).
    /// `matches` gets each pattern's index and the pattern.
    fn decide(&self, mut matches: impl FnMut(usize, &Pattern) -> bool) -> bool {
        let mut excluded = false;
        for (index, pattern) in self.patterns.iter().enumerate() {
            if pattern.exception == excluded && matches(index, pattern) {
                excluded = !pattern.exception;
            }
        }
        excluded
    }

    /// The match state of the context root, to walk down from with [`IgnorePatterns::enter`]
    /// and [`IgnorePatterns::excludes_in`].
    pub fn root_state(&self) -> DirMatch {
        DirMatch {
            matched: vec![false; self.patterns.len()],
            live: vec![true; self.patterns.len()],
            any_live: !self.patterns.is_empty(),
            excluded: false,
        }
    }

    /// Whether `path`, an entry of the directory whose state is `parent`, is excluded: the same
    /// answer as [`IgnorePatterns::matches`], but only the patterns that may still match below
    /// the directory are tried, each on `path` alone (its parents were tried on the way down).
    pub fn excludes_in(&self, parent: &DirMatch, path: &str) -> bool {
        if !parent.any_live {
            // Nothing can match below: the entry is decided exactly like its directory.
            return parent.excluded;
        }
        self.decide(|i, pattern| {
            parent.matched[i] || (parent.live[i] && pattern.matches_exactly(path))
        })
    }

    /// The state of the directory `path`, an entry of the directory whose state is `parent`.
    pub fn enter(&self, parent: &DirMatch, path: &str) -> DirMatch {
        let matched: Vec<bool> = self
            .patterns
            .iter()
            .enumerate()
            .map(|(i, pattern)| {
                parent.matched[i] || (parent.live[i] && pattern.matches_exactly(path))
            })
            .collect();
        let live: Vec<bool> = self
            .patterns
            .iter()
            .zip(&matched)
            .enumerate()
            .map(|(i, (pattern, matched))| {
                !matched && parent.live[i] && pattern.may_match_below(path)
            })
            .collect();
        let excluded = self.decide(|i, _| matched[i]);
        DirMatch {
            any_live: live.iter().any(|live| *live),
            matched,
            live,
            excluded,
        }
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

/// What a walk knows about a directory while matching its entries (see
/// [`IgnorePatterns::root_state`]): which patterns match the directory or one of its parents, and
/// which may still match something below it. Entries are then matched against those few patterns
/// on their own path only, and a subtree that no pattern can reach needs no matching at all.
#[derive(Debug, Clone)]
pub struct DirMatch {
    /// Per pattern: it matches the directory or one of its parents.
    matched: Vec<bool>,
    /// Per pattern: it does not, but may match a path below the directory.
    live: Vec<bool>,
    /// Some pattern is live.
    any_live: bool,
    /// The directory itself is excluded.
    excluded: bool,
}

/// Whether a relative path is already clean (no empty, `.` or `..` component, no leading or
/// trailing `/`): then its parents are simply the text before each `/`.
fn is_clean_relative(path: &str) -> bool {
    !path.is_empty()
        && path
            .split('/')
            .all(|component| !matches!(component, "" | "." | ".."))
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

    /// The decision of [`IgnorePatterns::matches`] computed the slow way, from Docker's
    /// parent list, as a reference for the faster paths.
    fn matches_by_parent_list(patterns: &IgnorePatterns, path: &str) -> bool {
        let parents = parent_dirs(path);
        patterns.decide(|_, pattern| pattern.matches_or_parent(path, &parents))
    }

    /// The decision for `path` reached the way a walk does: entering each parent directory.
    fn matches_by_walking(patterns: &IgnorePatterns, path: &str) -> bool {
        let mut state = patterns.root_state();
        for (end, _) in path.match_indices('/') {
            state = patterns.enter(&state, &path[..end]);
        }
        patterns.excludes_in(&state, path)
    }

    #[test]
    fn literal_prefixes_bound_where_a_pattern_can_match() {
        let patterns =
            IgnorePatterns::parse("src/gen\nsrc/*.o\nbuild**\n**/*.tmp\ndocs/[ab]/x\n").unwrap();
        let below = |dir: &str| -> Vec<&str> {
            patterns
                .patterns()
                .iter()
                .filter(|p| p.may_match_below(dir))
                .map(Pattern::as_str)
                .collect()
        };
        assert_eq!(below("src"), vec!["src/gen", "src/*.o", "**/*.tmp"]);
        // `*` never crosses `/`, but the bound is only the literal prefix: kept, harmlessly.
        assert_eq!(below("src/gen"), vec!["src/*.o", "**/*.tmp"]);
        assert_eq!(below("buildx"), vec!["build**", "**/*.tmp"]);
        assert_eq!(below("docs"), vec!["**/*.tmp", "docs/[ab]/x"]);
        assert_eq!(below("tree/d7"), vec!["**/*.tmp"]);
        assert_eq!(below("").len(), 5);
    }

    #[test]
    fn a_subtree_no_pattern_reaches_is_decided_like_its_directory() {
        let patterns = IgnorePatterns::parse("node_modules\n!node_modules/keep\n").unwrap();
        let tree = patterns.enter(&patterns.root_state(), "tree");
        assert!(!tree.any_live && !tree.excluded);
        let modules = patterns.enter(&patterns.root_state(), "node_modules");
        assert!(modules.excluded && modules.any_live);
        assert!(patterns.excludes_in(&modules, "node_modules/x"));
        assert!(!patterns.excludes_in(&modules, "node_modules/keep"));
        let kept = patterns.enter(&modules, "node_modules/keep");
        assert!(!kept.excluded && !kept.any_live);
        assert!(!patterns.excludes_in(&kept, "node_modules/keep/a"));
    }

    #[test]
    fn a_negated_class_can_match_a_slash_as_in_docker() {
        // moby/patternmatcher copies `[...]` into its regex unchanged, so `[^a]` also matches the
        // separator; Go's `filepath.Match` would not. Docker's behaviour is the reference.
        let patterns = IgnorePatterns::parse("*[^a]*/b.*\n").unwrap();
        assert!(patterns.matches("b/a/b."));
        assert!(patterns.matches("xy/b.c"));
        assert!(!patterns.matches("a/b.c"));
    }

    mod agreement_of_the_fast_paths {
        use super::*;
        use proptest::prelude::*;

        fn component() -> impl Strategy<Value = String> {
            prop::sample::select(&["a", "b", "ab", "*", "**", "?", "a*", "[ab]", "*.t", "x.t"][..])
                .prop_map(str::to_owned)
        }

        fn pattern() -> impl Strategy<Value = String> {
            (
                any::<bool>(),
                prop::collection::vec(component(), 1..4),
                any::<bool>(),
            )
                .prop_map(|(exception, parts, trailing_slash)| {
                    let text = parts.join("/");
                    let text = if trailing_slash {
                        format!("{text}/")
                    } else {
                        text
                    };
                    if exception { format!("!{text}") } else { text }
                })
        }

        proptest! {
            /// Walking (entering each parent, then matching the entry) and the allocation-free
            /// `matches` agree with Docker's parent-list rule on every pattern list and path.
            #[test]
            fn walk_state_and_matches_agree_with_parent_lists(
                patterns in prop::collection::vec(pattern(), 1..5),
                path in prop::collection::vec(
                    prop::sample::select(&["a", "b", "ab", "x.t", "c"][..]), 1..5
                ).prop_map(|parts| parts.join("/")),
            ) {
                let compiled = IgnorePatterns::compile(&patterns).expect("valid patterns");
                let expected = matches_by_parent_list(&compiled, &path);
                prop_assert_eq!(compiled.matches(&path), expected, "patterns {:?} path {:?}", patterns, path);
                prop_assert_eq!(matches_by_walking(&compiled, &path), expected, "patterns {:?} path {:?}", patterns, path);
            }
        }
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
                    // No negated class: Docker's regex lets `[^a]` match `/`, `filepath.Match` does
                    // not (see `a_negated_class_can_match_a_slash_as_in_docker`).
                    component(&["a", "b", ".", "*", "?", "[ab]", "\\*", "[a-b]"]), 1..4
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

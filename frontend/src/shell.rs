//! Docker's shell-word lexer: variable expansion (`$x`, `${x:-w}`, …) and word splitting, with the
//! Dockerfile's escape character.
//!
//! This is not a shell: it implements exactly the subset BuildKit's `shell.Lex` implements, with the
//! same results, because Dockerfiles in the wild are written against that behaviour. Quotes are
//! removed, the escape character (`\` or `` ` ``) makes the next character literal, and
//! `$name`, `${name}`, `${name:-word}`, `${name-word}`, `${name:+word}`, `${name+word}`,
//! `${name:?msg}`, `${name?msg}`, `${name#pat}`, `${name##pat}`, `${name%pat}`, `${name%%pat}`,
//! `${name/pat/repl}` and `${name//pat/repl}` are expanded. There is no command substitution,
//! arithmetic, `${#name}` or assignment (`${name=word}` is an error, as in BuildKit).
//!
//! BuildKit quirks kept on purpose: the word of every modifier is expanded even when it is not
//! used (so `${SET:-$OTHER}` still reports `OTHER` as referenced, and an error in it still fails);
//! positional and special parameters (`$1`, `$@`, `$$`, …) are plain unset names; with raw escapes
//! (heredoc bodies) an escape before an ordinary character inside double quotes is written twice.
//!
//! Patterns (`*`, `?`, `\x`) are matched by our own small NFA rather than by translating them to a
//! regex as BuildKit does; two corner cases differ on purpose: `*` and `?` also match newlines
//! (Go's `.` does not), and an escape before an ordinary character means that character instead
//! of being an "invalid escape" error.
//!
//! Besides the result, each expansion reports which names it looked up that were set (`matched`) and
//! unset (`unmatched`); lowering uses them for ARG cache rules and unused-build-arg warnings.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::BuildHasher;

use indexmap::IndexMap;

/// Where variable values come from.
pub trait Env {
    /// The value of `name`, or `None` when it is unset (a set-but-empty variable is `Some("")`).
    fn get(&self, name: &str) -> Option<String>;
}

impl Env for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        BTreeMap::get(self, name).cloned()
    }
}

impl<S: BuildHasher> Env for HashMap<String, String, S> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

impl<S: BuildHasher> Env for IndexMap<String, String, S> {
    fn get(&self, name: &str) -> Option<String> {
        IndexMap::get(self, name).cloned()
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn get(&self, name: &str) -> Option<String> {
        self(name)
    }
}

/// The result of [`Lexer::process_word`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expansion {
    pub value: String,
    /// Names referenced that were set (possibly to the empty string).
    pub matched: BTreeSet<String>,
    /// Names referenced that were unset.
    pub unmatched: BTreeSet<String>,
}

/// The result of [`Lexer::process_words`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WordsExpansion {
    pub words: Vec<String>,
    /// Names referenced that were set (possibly to the empty string).
    pub matched: BTreeSet<String>,
    /// Names referenced that were unset.
    pub unmatched: BTreeSet<String>,
}

/// An expansion failure, with the word being expanded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to process {word:?}: {kind}")]
pub struct ShellError {
    /// The word as given to the lexer.
    pub word: String,
    pub kind: ShellErrorKind,
}

/// What went wrong while expanding a word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShellErrorKind {
    #[error("unexpected end of statement while looking for matching single-quote")]
    UnterminatedSingleQuote,
    #[error("unexpected end of statement while looking for matching double-quote")]
    UnterminatedDoubleQuote,
    #[error("syntax error: missing '}}'")]
    MissingCloseBrace,
    #[error("syntax error: missing '/' in ${{}}")]
    MissingSlash,
    /// `${}`, `${{x}`, `${:x}`.
    #[error("syntax error: bad substitution")]
    BadSubstitution,
    /// `${x=w}`, `${x:#p}`, `${x.}` and other forms that BuildKit does not support.
    #[error("unsupported modifier ({0}) in substitution")]
    UnsupportedModifier(String),
    /// `${x?msg}` with `x` unset, or `${x:?msg}` with `x` unset or empty.
    #[error("{name}: {message}")]
    Required { name: String, message: String },
}

/// Options that change how quotes, escapes and unset variables are treated. The defaults are what
/// Dockerfile instructions use; heredoc bodies are expanded with raw quotes and raw escapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LexerOptions {
    /// Keep quote characters in the result (their content is still processed).
    pub raw_quotes: bool,
    /// Keep escape characters in the result (the escaped character is still taken literally).
    pub raw_escapes: bool,
    /// Leave references to unset variables as written instead of expanding them to nothing.
    pub skip_unset: bool,
}

/// Expands Dockerfile words. Cheap to create and immutable: one per Dockerfile (the escape character
/// is a per-file directive) can be shared freely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lexer {
    escape: char,
    options: LexerOptions,
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer::new('\\')
    }
}

impl Lexer {
    /// A lexer with the given escape character (`\` by default in Dockerfiles, `` ` `` with
    /// `# escape=``).
    pub fn new(escape: char) -> Lexer {
        Lexer {
            escape,
            options: LexerOptions::default(),
        }
    }

    /// The same lexer with other [`LexerOptions`].
    pub fn with_options(self, options: LexerOptions) -> Lexer {
        Lexer { options, ..self }
    }

    /// The escape character.
    pub fn escape(&self) -> char {
        self.escape
    }

    /// Expands one word: quotes removed, variables expanded, no splitting.
    ///
    /// # Errors
    /// [`ShellError`] for unterminated quotes or `${`, bad or unsupported substitutions, and
    /// `${x?msg}` / `${x:?msg}` on unset (or empty) variables.
    pub fn process_word(&self, word: &str, env: &dyn Env) -> Result<Expansion, ShellError> {
        let mut expander = Expander::new(self, word, env);
        match expander.process_until(None, self.options.raw_escapes) {
            Ok(processed) => Ok(Expansion {
                value: processed.value,
                matched: expander.matched,
                unmatched: expander.unmatched,
            }),
            Err(kind) => Err(ShellError {
                word: word.to_string(),
                kind,
            }),
        }
    }

    /// Expands and splits into words: unquoted whitespace (also whitespace coming from unquoted
    /// expansions) separates words, quoted and escaped whitespace does not, and empty words are
    /// dropped.
    ///
    /// # Errors
    /// As [`Lexer::process_word`].
    pub fn process_words(&self, word: &str, env: &dyn Env) -> Result<WordsExpansion, ShellError> {
        let mut expander = Expander::new(self, word, env);
        match expander.process_until(None, self.options.raw_escapes) {
            Ok(processed) => Ok(WordsExpansion {
                words: processed.words,
                matched: expander.matched,
                unmatched: expander.unmatched,
            }),
            Err(kind) => Err(ShellError {
                word: word.to_string(),
                kind,
            }),
        }
    }
}

/// A processed run of text: the joined value and the same text split into words.
struct Processed {
    value: String,
    words: Vec<String>,
}

/// Splits text into words as it is produced. Literal (quoted or escaped) characters always belong to
/// a word; other whitespace ends the current word.
#[derive(Default)]
struct WordSplitter {
    current: String,
    words: Vec<String>,
    /// True once anything literal (even an empty quoted string) started the current word.
    in_word: bool,
}

impl WordSplitter {
    fn push_splittable(&mut self, c: char) {
        if c.is_whitespace() {
            // An empty quoted string (`""`) opens a word but, like in BuildKit, never yields an
            // empty word on its own.
            if self.in_word && !self.current.is_empty() {
                self.words.push(std::mem::take(&mut self.current));
                self.in_word = false;
            }
        } else {
            self.push_literal(c);
        }
    }

    fn push_splittable_str(&mut self, text: &str) {
        text.chars().for_each(|c| self.push_splittable(c));
    }

    fn push_literal(&mut self, c: char) {
        self.current.push(c);
        self.in_word = true;
    }

    fn push_literal_str(&mut self, text: &str) {
        self.current.push_str(text);
        self.in_word = true;
    }

    fn finish(mut self) -> Vec<String> {
        if !self.current.is_empty() {
            self.words.push(self.current);
        }
        self.words
    }
}

/// The state of one expansion: the input, a cursor, and the names looked up so far.
struct Expander<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    options: LexerOptions,
    env: &'a dyn Env,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

impl<'a> Expander<'a> {
    fn new(lexer: &Lexer, word: &str, env: &'a dyn Env) -> Expander<'a> {
        Expander {
            chars: word.chars().collect(),
            pos: 0,
            escape: lexer.escape,
            options: lexer.options,
            env,
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next_char(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += 1;
        Some(c)
    }

    fn lookup(&mut self, name: &str) -> Option<String> {
        let value = self.env.get(name);
        let set = if value.is_some() {
            &mut self.matched
        } else {
            &mut self.unmatched
        };
        set.insert(name.to_string());
        value
    }

    /// Processes text up to `stop` (consumed) or, with no stop character, to the end of input.
    /// `raw_escapes` keeps escape characters in the output: patterns need them to tell `\*` from `*`.
    fn process_until(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<Processed, ShellErrorKind> {
        let mut value = String::new();
        let mut words = WordSplitter::default();
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                self.pos += 1;
                return Ok(Processed {
                    value,
                    words: words.finish(),
                });
            }
            match c {
                '$' => {
                    let expanded = self.process_dollar()?;
                    value.push_str(&expanded);
                    // Unquoted expansions are subject to word splitting.
                    words.push_splittable_str(&expanded);
                }
                '\'' => {
                    let quoted = self.process_single_quote()?;
                    value.push_str(&quoted);
                    words.push_literal_str(&quoted);
                }
                '"' => {
                    let quoted = self.process_double_quote(raw_escapes)?;
                    value.push_str(&quoted);
                    words.push_literal_str(&quoted);
                }
                _ if c == self.escape => {
                    self.pos += 1;
                    if raw_escapes {
                        value.push(c);
                        words.push_literal(c);
                    }
                    // An escape at the very end is dropped (`hello\` → `hello`).
                    let Some(escaped) = self.next_char() else {
                        break;
                    };
                    value.push(escaped);
                    words.push_literal(escaped);
                }
                _ => {
                    self.pos += 1;
                    value.push(c);
                    words.push_splittable(c);
                }
            }
        }
        match stop {
            // Nested callers turn this into a message naming what was missing.
            Some(_) => Err(ShellErrorKind::MissingCloseBrace),
            None => Ok(Processed {
                value,
                words: words.finish(),
            }),
        }
    }

    /// `'...'`: everything literal up to the next `'`; there is no escape inside.
    fn process_single_quote(&mut self) -> Result<String, ShellErrorKind> {
        let mut out = String::new();
        self.pos += 1;
        if self.options.raw_quotes {
            out.push('\'');
        }
        loop {
            match self.next_char() {
                None => return Err(ShellErrorKind::UnterminatedSingleQuote),
                Some('\'') => {
                    if self.options.raw_quotes {
                        out.push('\'');
                    }
                    return Ok(out);
                }
                Some(c) => out.push(c),
            }
        }
    }

    /// `"..."`: literal except `$` expansions; the escape character escapes only `"`, `$` and
    /// itself and is kept before anything else (as in sh).
    fn process_double_quote(&mut self, raw_escapes: bool) -> Result<String, ShellErrorKind> {
        let mut out = String::new();
        self.pos += 1;
        if self.options.raw_quotes {
            out.push('"');
        }
        loop {
            match self.peek() {
                None => return Err(ShellErrorKind::UnterminatedDoubleQuote),
                Some('"') => {
                    self.pos += 1;
                    if self.options.raw_quotes {
                        out.push('"');
                    }
                    return Ok(out);
                }
                Some('$') => {
                    let expanded = self.process_dollar()?;
                    out.push_str(&expanded);
                }
                Some(c) if c == self.escape => {
                    self.pos += 1;
                    if raw_escapes {
                        out.push(c);
                    }
                    match self.peek() {
                        Some(next) if next == '"' || next == '$' || next == self.escape => {
                            self.pos += 1;
                            out.push(next);
                        }
                        // At the end the quote is unterminated anyway.
                        None => {}
                        // Before anything else the escape is literal. With raw escapes it is
                        // then written twice (`"\n"` → `\\n`): BuildKit does this, and heredoc
                        // bodies of COPY must come out byte-identical to Docker's.
                        Some(_) => out.push(c),
                    }
                }
                Some(c) => {
                    self.pos += 1;
                    out.push(c);
                }
            }
        }
    }

    /// Reads a parameter name: a run of letters, digits and `_`; or a run of digits (positional
    /// parameters: `$10x` is `$10` then `x`); or one special parameter character.
    fn read_name(&mut self) -> String {
        let mut name = String::new();
        match self.peek() {
            Some(c) if is_digit(c) => {
                while let Some(c) = self.peek().filter(|&c| is_digit(c)) {
                    name.push(c);
                    self.pos += 1;
                }
                return name;
            }
            Some(c) if is_special_parameter(c) => {
                self.pos += 1;
                name.push(c);
                return name;
            }
            _ => {}
        }
        while let Some(c) = self
            .peek()
            .filter(|&c| c.is_alphabetic() || is_digit(c) || c == '_')
        {
            name.push(c);
            self.pos += 1;
        }
        name
    }

    /// Expands a `$` reference; the cursor is on the `$`.
    fn process_dollar(&mut self) -> Result<String, ShellErrorKind> {
        self.pos += 1;
        if self.peek() != Some('{') {
            let name = self.read_name();
            if name.is_empty() {
                // A lone `$` (at the end, or before a character that cannot start a name).
                return Ok("$".to_string());
            }
            return Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.options.skip_unset => format!("${name}"),
                None => String::new(),
            });
        }
        self.pos += 1;
        match self.peek() {
            None => return Err(ShellErrorKind::MissingCloseBrace),
            Some('{' | '}' | ':') => return Err(ShellErrorKind::BadSubstitution),
            Some(_) => {}
        }
        let name = self.read_name();
        match self.next_char() {
            None => Err(ShellErrorKind::MissingCloseBrace),
            Some('}') => Ok(match self.lookup(&name) {
                Some(value) => value,
                None if self.options.skip_unset => format!("${{{name}}}"),
                None => String::new(),
            }),
            Some(':') => match self.next_char() {
                None => Err(ShellErrorKind::MissingCloseBrace),
                Some(op @ ('-' | '+' | '?')) => self.process_modifier(&name, op, true),
                Some(op) => Err(ShellErrorKind::UnsupportedModifier(format!(":{op}"))),
            },
            Some(op @ ('-' | '+' | '?' | '#' | '%')) => self.process_modifier(&name, op, false),
            Some('/') => self.process_replace(&name),
            Some(op) => Err(ShellErrorKind::UnsupportedModifier(op.to_string())),
        }
    }

    /// Processes the word of a `${name<op>word}` up to its `}`.
    fn process_braced_word(&mut self, raw_escapes: bool) -> Result<String, ShellErrorKind> {
        match self.process_until(Some('}'), raw_escapes) {
            Ok(processed) => Ok(processed.value),
            // Whatever failed inside, running off the end means the `}` is missing.
            Err(_) if self.peek().is_none() => Err(ShellErrorKind::MissingCloseBrace),
            Err(other) => Err(other),
        }
    }

    /// `${name-word}`, `${name+word}`, `${name?word}`, `${name#pat}`, `${name%pat}` and, with
    /// `null_is_unset`, their `:` forms, where an empty value counts as unset.
    fn process_modifier(
        &mut self,
        name: &str,
        op: char,
        null_is_unset: bool,
    ) -> Result<String, ShellErrorKind> {
        let is_pattern = op == '#' || op == '%';
        let word = self.process_braced_word(is_pattern)?;
        let value = self.lookup(name);
        if value.is_none() && self.options.skip_unset {
            let colon = if null_is_unset { ":" } else { "" };
            return Ok(format!("${{{name}{colon}{op}{word}}}"));
        }
        let unset = match &value {
            None => true,
            Some(v) => null_is_unset && v.is_empty(),
        };
        match op {
            '-' => Ok(if unset {
                word
            } else {
                value.unwrap_or_default()
            }),
            '+' => Ok(if unset { String::new() } else { word }),
            '?' => match value {
                Some(v) if !unset => Ok(v),
                value => {
                    let message = if !word.is_empty() {
                        word
                    } else if value.is_none() {
                        "is not allowed to be unset".to_string()
                    } else {
                        "is not allowed to be empty".to_string()
                    };
                    Err(ShellErrorKind::Required {
                        name: name.to_string(),
                        message,
                    })
                }
            },
            _ => {
                // `##` / `%%` remove the longest match, `#` / `%` the shortest.
                let (longest, pattern) = match word.strip_prefix(op) {
                    Some(rest) => (true, rest),
                    None => (false, word.as_str()),
                };
                let pattern = Pattern::compile(pattern);
                let value = value.unwrap_or_default();
                Ok(if op == '#' {
                    pattern.remove_prefix(&value, longest)
                } else {
                    pattern.remove_suffix(&value, longest)
                })
            }
        }
    }

    /// `${name/pat/repl}` and `${name//pat/repl}`; the cursor is after the first `/`.
    fn process_replace(&mut self, name: &str) -> Result<String, ShellErrorKind> {
        let replace_all = self.peek() == Some('/');
        if replace_all {
            self.pos += 1;
        }
        let pattern = match self.process_until(Some('/'), true) {
            Ok(processed) => processed.value,
            Err(_) if self.peek().is_none() => return Err(ShellErrorKind::MissingSlash),
            Err(other) => return Err(other),
        };
        let replacement = self.process_braced_word(true)?;
        let Some(value) = self.lookup(name) else {
            if self.options.skip_unset {
                let slashes = if replace_all { "//" } else { "/" };
                return Ok(format!("${{{name}{slashes}{pattern}/{replacement}}}"));
            }
            return Ok(String::new());
        };
        Ok(Pattern::compile(&pattern).replace(&value, &replacement, replace_all))
    }
}

/// Digits as BuildKit (Go's `unicode.IsDigit`) sees them, near enough: ASCII digits plus other
/// Unicode numerals.
fn is_digit(c: char) -> bool {
    c.is_ascii_digit() || (!c.is_ascii() && c.is_numeric())
}

/// POSIX special parameters (`$@`, `$*`, `$#`, `$?`, `$-`, `$$`, `$!`, `$0`); never set in a
/// Dockerfile, but they must be read as one-character names.
fn is_special_parameter(c: char) -> bool {
    matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

/// One element of a shell pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatternToken {
    /// `*`
    AnyString,
    /// `?`
    AnyChar,
    Literal(char),
}

/// A shell pattern as used by `${x#pat}`, `${x%pat}` and `${x/pat/repl}`: `*`, `?` and
/// backslash-escaped literals (no bracket expressions, as in BuildKit). The pattern text keeps the
/// escapes of the source word, and values of variables used in it are patterns too.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    tokens: Vec<PatternToken>,
}

impl Pattern {
    fn compile(text: &str) -> Pattern {
        let mut tokens = Vec::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            tokens.push(match c {
                '*' => PatternToken::AnyString,
                '?' => PatternToken::AnyChar,
                // A trailing backslash (only possible from a variable's value) matches itself.
                '\\' => PatternToken::Literal(chars.next().unwrap_or('\\')),
                c => PatternToken::Literal(c),
            });
        }
        Pattern { tokens }
    }

    fn reversed(&self) -> Pattern {
        Pattern {
            tokens: self.tokens.iter().rev().copied().collect(),
        }
    }

    /// Every `end` such that the pattern matches `text[..end]` exactly, ascending. A simulation of
    /// the pattern's NFA (state `k` = `k` tokens matched), so the cost is `O(len(text) × len(pattern))`.
    fn anchored_match_ends(&self, text: &[char]) -> Vec<usize> {
        let token_count = self.tokens.len();
        let mut active = vec![false; token_count + 1];
        active[0] = true;
        self.close_over_stars(&mut active);
        let mut ends = Vec::new();
        for (position, &c) in text.iter().enumerate() {
            if active[token_count] {
                ends.push(position);
            }
            let mut next = vec![false; token_count + 1];
            for (state, token) in self.tokens.iter().enumerate() {
                if !active[state] {
                    continue;
                }
                match token {
                    PatternToken::AnyString => next[state] = true,
                    PatternToken::AnyChar => next[state + 1] = true,
                    PatternToken::Literal(l) if *l == c => next[state + 1] = true,
                    PatternToken::Literal(_) => {}
                }
            }
            self.close_over_stars(&mut next);
            if !next.iter().any(|&a| a) {
                return ends;
            }
            active = next;
        }
        if active[token_count] {
            ends.push(text.len());
        }
        ends
    }

    /// A `*` may match nothing: a state before a star also counts as the state after it.
    fn close_over_stars(&self, active: &mut [bool]) {
        for (state, token) in self.tokens.iter().enumerate() {
            if active[state] && *token == PatternToken::AnyString {
                active[state + 1] = true;
            }
        }
    }

    /// Removes the shortest (or longest) prefix of `value` the pattern matches; `value` unchanged
    /// when none matches.
    fn remove_prefix(&self, value: &str, longest: bool) -> String {
        let text: Vec<char> = value.chars().collect();
        let ends = self.anchored_match_ends(&text);
        let end = if longest { ends.last() } else { ends.first() };
        match end {
            Some(&end) => text[end..].iter().collect(),
            None => value.to_string(),
        }
    }

    /// Removes the shortest (or longest) suffix of `value` the pattern matches, by matching the
    /// reversed pattern against the reversed value.
    fn remove_suffix(&self, value: &str, longest: bool) -> String {
        let text: Vec<char> = value.chars().collect();
        let reversed_text: Vec<char> = text.iter().rev().copied().collect();
        let lengths = self.reversed().anchored_match_ends(&reversed_text);
        let length = if longest {
            lengths.last()
        } else {
            lengths.first()
        };
        match length {
            Some(&length) => text[..text.len() - length].iter().collect(),
            None => value.to_string(),
        }
    }

    /// The leftmost match at or after `from`, longest at that start (what a greedy regex finds).
    fn find(&self, text: &[char], from: usize) -> Option<(usize, usize)> {
        (from..=text.len()).find_map(|start| {
            self.anchored_match_ends(&text[start..])
                .last()
                .map(|&length| (start, start + length))
        })
    }

    /// Replaces the first (or every) match with `replacement`. For replace-all, an empty match
    /// right after a previous match is skipped and the search always advances, as in Go's
    /// `Regexp.ReplaceAllString`, which BuildKit uses.
    fn replace(&self, value: &str, replacement: &str, all: bool) -> String {
        let text: Vec<char> = value.chars().collect();
        let mut out = String::new();
        let mut last_end = 0;
        let mut search = 0;
        while search <= text.len() {
            let Some((start, end)) = self.find(&text, search) else {
                break;
            };
            out.extend(&text[last_end..start]);
            if end > last_end || start == 0 {
                out.push_str(replacement);
            }
            last_end = end;
            if !all {
                break;
            }
            search = if end > search { end } else { search + 1 };
        }
        out.extend(&text[last_end..]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expand(word: &str, pairs: &[(&str, &str)]) -> Result<Expansion, ShellError> {
        Lexer::new('\\').process_word(word, &env(pairs))
    }

    fn value(word: &str, pairs: &[(&str, &str)]) -> String {
        expand(word, pairs)
            .unwrap_or_else(|e| panic!("{word:?}: {e}"))
            .value
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn matched_and_unmatched_name_every_lookup() {
        let e = expand(
            "${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}",
            &[("FOO", "xxx"), ("BAR", "")],
        )
        .unwrap();
        assert_eq!(e.value, "xxx bbb ccc");
        assert_eq!(e.matched, names(&["BAR", "FOO"]));
        assert_eq!(e.unmatched, names(&["BAZ"]));

        let e = expand("x", &[("DUMMY", "d")]).unwrap();
        assert!(e.matched.is_empty() && e.unmatched.is_empty());
    }

    #[test]
    fn unused_modifier_words_are_still_expanded_and_reported() {
        let e = expand("${SET:-$OTHER}", &[("SET", "v")]).unwrap();
        assert_eq!(e.value, "v");
        assert_eq!(e.matched, names(&["SET"]));
        assert_eq!(e.unmatched, names(&["OTHER"]));
    }

    #[test]
    fn errors_in_unused_modifier_words_still_fail() {
        let err = expand("${SET:-${MISSING?needed}}", &[("SET", "v")]).unwrap_err();
        assert_eq!(
            err.kind,
            ShellErrorKind::Required {
                name: "MISSING".into(),
                message: "needed".into()
            }
        );
    }

    #[test]
    fn patterns_match_across_newlines() {
        assert_eq!(value("${X#*=}", &[("X", "a\nb=c")]), "c");
        assert_eq!(value("${X%%\n*}", &[("X", "first\nsecond")]), "first");
    }

    #[test]
    fn plus_and_minus_without_colon_treat_empty_as_set() {
        let pairs = [("FOO", "xxx"), ("BAR", "")];
        assert_eq!(
            value("${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}", &pairs),
            "xxx  ccc"
        );
        assert_eq!(
            value("${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}", &pairs),
            "aaa bbb "
        );
        assert_eq!(
            value("${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}", &pairs),
            "aaa  "
        );
    }

    #[test]
    fn required_variables_fail_with_the_expanded_message() {
        let no_empty = "${VAR:?message here$ARG}";
        let no_unset = "${VAR?message here$ARG}";
        assert_eq!(value(no_empty, &[("VAR", "plain"), ("ARG", "x")]), "plain");
        let err = expand(no_empty, &[("VAR", ""), ("ARG", "x")]).unwrap_err();
        assert_eq!(
            err.kind,
            ShellErrorKind::Required {
                name: "VAR".into(),
                message: "message herex".into()
            }
        );
        assert!(err.to_string().contains("VAR: message herex"), "{err}");
        assert!(expand(no_empty, &[("ARG", "x")]).is_err());
        assert_eq!(value(no_unset, &[("VAR", ""), ("ARG", "x")]), "");
        let err = expand("${VAR?}", &[]).unwrap_err();
        assert!(err.to_string().contains("VAR: is not allowed to be unset"));
        let err = expand("${VAR:?}", &[("VAR", "")]).unwrap_err();
        assert!(err.to_string().contains("VAR: is not allowed to be empty"));
    }

    #[test]
    fn syntax_errors_say_what_is_wrong() {
        let kind = |w: &str| expand(w, &[]).unwrap_err().kind;
        assert_eq!(kind("he${PWD"), ShellErrorKind::MissingCloseBrace);
        assert_eq!(kind("${"), ShellErrorKind::MissingCloseBrace);
        assert_eq!(kind("${}"), ShellErrorKind::BadSubstitution);
        assert_eq!(kind("${:-x}"), ShellErrorKind::BadSubstitution);
        assert_eq!(
            kind("${x=y}"),
            ShellErrorKind::UnsupportedModifier("=".into())
        );
        assert_eq!(
            kind("${x:#y}"),
            ShellErrorKind::UnsupportedModifier(":#".into())
        );
        assert_eq!(kind("${x//ww}"), ShellErrorKind::MissingSlash);
        assert_eq!(kind("'abc"), ShellErrorKind::UnterminatedSingleQuote);
        assert_eq!(kind("\"abc"), ShellErrorKind::UnterminatedDoubleQuote);
        let err = expand("a${b", &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to process \"a${b\": syntax error: missing '}'"
        );
    }

    #[test]
    fn backtick_escape_replaces_backslash() {
        let lexer = Lexer::new('`');
        let env = env(&[("X", "v")]);
        let expanded = |w: &str| lexer.process_word(w, &env).unwrap().value;
        assert_eq!(expanded(r"C:\dir\$X"), r"C:\dir\v");
        assert_eq!(expanded("`$X"), "$X");
        assert_eq!(expanded("\"a`\"b\""), "a\"b");
        assert_eq!(expanded("\"a`b\""), "a`b");
        assert_eq!(expanded("a``b"), "a`b");
        assert_eq!(expanded("end`"), "end");
        let words = lexer.process_words("a` b c", &env).unwrap().words;
        assert_eq!(words, ["a b", "c"]);
    }

    #[test]
    fn prefix_and_suffix_removal() {
        let foo = [("FOO", "xxyy")];
        assert_eq!(value("${FOO#*x*y}", &foo), "y");
        assert_eq!(value("${FOO#*}", &foo), "xxyy");
        assert_eq!(value("${FOO##*x}", &foo), "yy");
        assert_eq!(value("${FOO##}", &foo), "xxyy");
        assert_eq!(value("${FOO%y*}", &foo), "xxy");
        assert_eq!(value("${FOO%%y*}", &foo), "xx");
        assert_eq!(value("${FOO%x}", &foo), "xxyy");
        assert_eq!(
            value("${FOO#$BAR}", &[("FOO", "xxyy"), ("BAR", "x")]),
            "xyy"
        );
        assert_eq!(value("${FOO#?\\?}", &[("FOO", "???y")]), "?y");
        assert_eq!(value("${FOO%%\\**}", &[("FOO", "xx**")]), "xx");
        assert_eq!(value("${FOO%%\\**\\*}", &[("FOO", "a***yy*")]), "a");
        assert_eq!(
            value(
                "${FOO#()[]{\\}^$.\\*\\?|\\\\}",
                &[("FOO", "()[]{}^$.*?|\\x")]
            ),
            "x"
        );
        assert_eq!(value("${P%/*}", &[("P", "/usr/local/bin")]), "/usr/local");
        assert_eq!(value("${P##*/}", &[("P", "/usr/local/bin")]), "bin");
    }

    #[test]
    fn replacement_first_and_all() {
        let pairs = [("FOO", "/foo*/*/*.txt"), ("NEEDLE", "\\*/")];
        assert_eq!(
            value("${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}", &pairs),
            "/foo.*/*.txt - /foo..*.txt"
        );
        let pairs = [("FOO", "/a/foo/b/c.txt"), ("NEEDLE", "/?/"), ("R", "/")];
        assert_eq!(
            value("${FOO/$NEEDLE/$R} - ${FOO//$NEEDLE/$R}", &pairs),
            "/foo/b/c.txt - /foo/c.txt"
        );
        let pairs = [("FOO", "/tmp/foo.txt")];
        assert_eq!(value("${FOO//\\//\\/}", &pairs), "\\/tmp\\/foo.txt");
        assert_eq!(
            value("${FOO/$BAR/ww}", &[("FOO", "xxyy"), ("BAR", "")]),
            "wwxxyy"
        );
        assert_eq!(value("${FOO///}", &[("FOO", "xxyy")]), "xxyy");
        assert_eq!(value("${FOO//x*/z}", &[("FOO", "axbxc")]), "az");
        let e = expand("${FOO///}", &[]).unwrap();
        assert_eq!(e.value, "");
        assert_eq!(e.unmatched, names(&["FOO"]));
    }

    #[test]
    fn replace_all_with_an_empty_pattern_inserts_between_characters() {
        // Go's ReplaceAllString with an empty regex; BuildKit's result.
        let pattern = Pattern::compile("");
        assert_eq!(pattern.replace("ab", "-", true), "-a-b-");
        // A greedy `*` takes everything; the empty match at the end right after it is skipped.
        assert_eq!(Pattern::compile("*").replace("ab", "-", true), "-");
        assert_eq!(Pattern::compile("x").replace("axxb", "-", true), "a--b");
        assert_eq!(Pattern::compile("x*").replace("axxb", "-", true), "a-");
    }

    #[test]
    fn words_split_only_unquoted_whitespace() {
        let lexer = Lexer::default();
        let env = env(&[("space", "abc  def")]);
        let words = |w: &str| lexer.process_words(w, &env).unwrap().words;
        assert_eq!(words("a${space}b"), ["aabc", "defb"]);
        assert_eq!(words("a\"${space}\"b"), ["aabc  defb"]);
        assert_eq!(words("  a   b  "), ["a", "b"]);
        assert_eq!(words("a \"\" b"), ["a", "b"]);
        assert!(words("").is_empty());
    }

    #[test]
    fn raw_quotes_and_escapes_keep_them() {
        let lexer = Lexer::new('\\').with_options(LexerOptions {
            raw_quotes: true,
            raw_escapes: true,
            skip_unset: false,
        });
        let env = env(&[("X", "v")]);
        let out = lexer
            .process_word(r#"echo "$X \$X" '$X' \$X"#, &env)
            .unwrap();
        assert_eq!(out.value, r#"echo "v \$X" '$X' \$X"#);
        // BuildKit's quirk, kept for identical heredoc files: a raw escape before an ordinary
        // character inside double quotes comes out doubled; outside quotes it is kept once.
        let out = lexer.process_word(r#""a\nb" a\nb"#, &env).unwrap();
        assert_eq!(out.value, r#""a\\nb" a\nb"#);
    }

    #[test]
    fn skip_unset_keeps_references_as_written() {
        let lexer = Lexer::default().with_options(LexerOptions {
            skip_unset: true,
            ..LexerOptions::default()
        });
        let env = env(&[("X", "v")]);
        let out = lexer
            .process_word("$X $Y ${Y} ${Y:-d} ${Y//a/b}", &env)
            .unwrap();
        assert_eq!(out.value, "v $Y ${Y} ${Y:-d} ${Y//a/b}");
    }

    #[test]
    fn optional_suffix_from_a_platform_variant() {
        let release =
            "x-${VERSION}.${TARGETOS}-${TARGETARCH}${TARGETVARIANT:+-${TARGETVARIANT}}.tgz";
        let base = [("VERSION", "1.2"), ("TARGETOS", "linux")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let pairs: Vec<_> = base.iter().chain(extra).copied().collect();
            value(release, &pairs)
        };
        assert_eq!(
            with(&[("TARGETARCH", "arm"), ("TARGETVARIANT", "v7")]),
            "x-1.2.linux-arm-v7.tgz"
        );
        assert_eq!(
            with(&[("TARGETARCH", "arm64"), ("TARGETVARIANT", "")]),
            "x-1.2.linux-arm64.tgz"
        );
        assert_eq!(with(&[("TARGETARCH", "arm64")]), "x-1.2.linux-arm64.tgz");
    }

    #[test]
    fn dollar_without_a_name_is_literal() {
        assert_eq!(value("a$", &[]), "a$");
        assert_eq!(value("$ x", &[]), "$ x");
        assert_eq!(value("\"$\"", &[]), "$");
        assert_eq!(value("${X:-$}", &[]), "$");
        let words = Lexer::default()
            .process_words("a $ b", &env(&[]))
            .unwrap()
            .words;
        assert_eq!(words, ["a", "$", "b"]);
    }

    #[test]
    fn closures_and_hash_maps_are_environments() {
        let closure = |name: &str| (name == "A").then(|| "1".to_string());
        assert_eq!(
            Lexer::default()
                .process_word("$A$B", &closure)
                .unwrap()
                .value,
            "1"
        );
        let map: HashMap<String, String> = [("A".to_string(), "2".to_string())].into();
        assert_eq!(
            Lexer::default().process_word("$A", &map).unwrap().value,
            "2"
        );
        let map: IndexMap<String, String> = [("A".to_string(), "3".to_string())].into();
        assert_eq!(
            Lexer::default().process_word("$A", &map).unwrap().value,
            "3"
        );
    }
}

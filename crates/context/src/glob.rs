//! Go's `filepath.Match` (Unix flavour) and `path.Clean`, the two primitives Docker builds its path rules on.
//!
//! COPY/ADD wildcards are matched one path component at a time with exactly these rules, and
//! `.dockerignore` patterns are checked for syntax with them before being translated to regexes.
//! Syntax follows Go: `*` (any run without `/`), `?` (one character except `/`), `[...]` classes with
//! ranges and `^` negation (`!` is a plain member), `\` escapes the next character. A malformed
//! pattern is an error even when the name does not match, as in Go.

use thiserror::Error;

/// The pattern is not valid `filepath.Match` syntax.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("syntax error in pattern {pattern:?}")]
pub struct BadPattern {
    /// The offending pattern.
    pub pattern: String,
}

/// Reports whether `name` matches the shell pattern `pattern` (Go `filepath.Match` on Unix).
///
/// # Errors
/// [`BadPattern`] when the pattern is malformed (unclosed `[`, bad range, trailing `\`, ...).
pub fn go_match(pattern: &str, name: &str) -> Result<bool, BadPattern> {
    let bad = || BadPattern {
        pattern: pattern.to_owned(),
    };
    let mut pat = pattern.as_bytes();
    let mut name = name.as_bytes();
    'chunks: while !pat.is_empty() {
        let (star, chunk, rest) = scan_chunk(pat);
        pat = rest;
        if star && chunk.is_empty() {
            // A trailing `*` matches the rest of the name unless it contains a `/`.
            return Ok(!name.contains(&b'/'));
        }
        let first = match_chunk(chunk, name);
        if let Ok(Some(t)) = first {
            // The last chunk must consume the whole name, otherwise keep trying with the star.
            if t.is_empty() || !pat.is_empty() {
                name = t;
                continue;
            }
        }
        if first.is_err() {
            return Err(bad());
        }
        if star {
            let mut i = 0;
            while i < name.len() && name[i] != b'/' {
                match match_chunk(chunk, &name[i + 1..]) {
                    Ok(Some(t)) => {
                        if pat.is_empty() && !t.is_empty() {
                            i += 1;
                            continue;
                        }
                        name = t;
                        continue 'chunks;
                    }
                    Ok(None) => {}
                    Err(()) => return Err(bad()),
                }
                i += 1;
            }
        }
        // Before answering "no", make sure the rest of the pattern is well-formed.
        while !pat.is_empty() {
            let (_, chunk, rest) = scan_chunk(pat);
            pat = rest;
            if match_chunk(chunk, b"").is_err() {
                return Err(bad());
            }
        }
        return Ok(false);
    }
    Ok(name.is_empty())
}

/// Checks only the syntax of a pattern (what Docker does with `filepath.Match(p, ".")`).
///
/// # Errors
/// [`BadPattern`] when the pattern is malformed.
pub fn check_syntax(pattern: &str) -> Result<(), BadPattern> {
    go_match(pattern, ".").map(|_| ())
}

/// True when the path component contains an unescaped wildcard (`*`, `?` or `[`).
pub fn contains_wildcards(component: &str) -> bool {
    let bytes = component.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 1,
            b'*' | b'?' | b'[' => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

/// Splits off leading stars and the next chunk (up to the next `*` outside a class).
fn scan_chunk(mut pat: &[u8]) -> (bool, &[u8], &[u8]) {
    let mut star = false;
    while let Some(b'*') = pat.first() {
        pat = &pat[1..];
        star = true;
    }
    let mut in_range = false;
    let mut i = 0;
    while i < pat.len() {
        match pat[i] {
            b'\\' if i + 1 < pat.len() => i += 1,
            b'[' => in_range = true,
            b']' => in_range = false,
            b'*' if !in_range => break,
            _ => {}
        }
        i += 1;
    }
    (star, &pat[..i], &pat[i..])
}

/// Decodes one UTF-8 character; invalid bytes decode as U+FFFD of width 1, as Go does.
fn decode_char(s: &[u8]) -> (char, usize) {
    let len = match s.first() {
        None => return ('\u{FFFD}', 0),
        Some(b) if *b < 0x80 => 1,
        Some(b) if *b >= 0xF0 => 4,
        Some(b) if *b >= 0xE0 => 3,
        Some(b) if *b >= 0xC0 => 2,
        Some(_) => 1,
    };
    match s
        .get(..len)
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
    {
        Some(text) => text.chars().next().map_or(('\u{FFFD}', 1), |c| (c, len)),
        None => ('\u{FFFD}', 1),
    }
}

/// Matches one chunk at the start of `s`. `Ok(Some(rest))` on a match, `Ok(None)` on no match,
/// `Err(())` when the chunk is malformed (checked even after the match has failed).
fn match_chunk<'a>(mut chunk: &[u8], mut s: &'a [u8]) -> Result<Option<&'a [u8]>, ()> {
    let mut failed = false;
    while !chunk.is_empty() {
        if !failed && s.is_empty() {
            failed = true;
        }
        match chunk[0] {
            b'[' => {
                let mut r = '\u{FFFD}';
                if !failed {
                    let (c, n) = decode_char(s);
                    r = c;
                    s = &s[n..];
                }
                chunk = &chunk[1..];
                let mut negated = false;
                if chunk.first() == Some(&b'^') {
                    negated = true;
                    chunk = &chunk[1..];
                }
                let mut matched = false;
                let mut ranges = 0;
                loop {
                    if chunk.first() == Some(&b']') && ranges > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let (lo, rest) = get_escaped(chunk)?;
                    chunk = rest;
                    let mut hi = lo;
                    if chunk.first() == Some(&b'-') {
                        let (h, rest) = get_escaped(&chunk[1..])?;
                        hi = h;
                        chunk = rest;
                    }
                    if lo <= r && r <= hi {
                        matched = true;
                    }
                    ranges += 1;
                }
                if matched == negated {
                    failed = true;
                }
            }
            b'?' => {
                if !failed {
                    if s[0] == b'/' {
                        failed = true;
                    }
                    let (_, n) = decode_char(s);
                    s = &s[n..];
                }
                chunk = &chunk[1..];
            }
            first => {
                let literal = if first == b'\\' {
                    chunk = &chunk[1..];
                    match chunk.first() {
                        Some(b) => *b,
                        None => return Err(()),
                    }
                } else {
                    first
                };
                if !failed {
                    if literal != s[0] {
                        failed = true;
                    }
                    s = &s[1..];
                }
                chunk = &chunk[1..];
            }
        }
    }
    if failed { Ok(None) } else { Ok(Some(s)) }
}

/// Reads one (possibly escaped) class member; the class must continue after it.
fn get_escaped(mut chunk: &[u8]) -> Result<(char, &[u8]), ()> {
    match chunk.first() {
        None | Some(b'-') | Some(b']') => return Err(()),
        Some(b'\\') => {
            chunk = &chunk[1..];
            if chunk.is_empty() {
                return Err(());
            }
        }
        Some(_) => {}
    }
    let (c, n) = decode_char(chunk);
    if c == '\u{FFFD}' && n == 1 && chunk[0] >= 0x80 {
        return Err(());
    }
    let rest = &chunk[n..];
    if rest.is_empty() {
        return Err(());
    }
    Ok((c, rest))
}

/// Lexical path cleaning exactly like Go's `path.Clean`: collapses `//`, drops `.` segments,
/// resolves `..` against earlier segments (a leading `..` of a relative path survives, `..` at
/// the root of an absolute path is dropped) and removes a trailing `/`. The empty path is `.`.
pub fn clean_path(path: &str) -> String {
    if path.is_empty() {
        return ".".to_owned();
    }
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    // Number of leading `..` segments that cannot be resolved (relative paths only).
    let mut fixed_dotdots = 0;
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if parts.len() > fixed_dotdots {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                    fixed_dotdots += 1;
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_match_table() {
        // (pattern, name, expected) — Go's filepath.Match semantics.
        let cases: &[(&str, &str, Result<bool, ()>)] = &[
            ("abc", "abc", Ok(true)),
            ("*", "abc", Ok(true)),
            ("*c", "abc", Ok(true)),
            ("a*", "a", Ok(true)),
            ("a*", "ab/c", Ok(false)),
            ("a*/b", "abc/b", Ok(true)),
            ("a*/b", "a/c/b", Ok(false)),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", Ok(true)),
            ("a*b?c*x", "abxbbxdbxebxczzx", Ok(true)),
            ("a*b?c*x", "abxbbxdbxebxczzy", Ok(false)),
            ("ab[^e-g]", "abc", Ok(true)),
            ("ab[^c]", "abc", Ok(false)),
            ("a\\*b", "a*b", Ok(true)),
            ("a\\*b", "ab", Ok(false)),
            ("a?b", "a☺b", Ok(true)),
            ("a???b", "a☺b", Ok(false)),
            ("[a-ζ]*", "α", Ok(true)),
            ("*[a-ζ]", "A", Ok(false)),
            ("a?b", "a/b", Ok(false)),
            ("[\\]a]", "]", Ok(true)),
            ("[x\\-]", "-", Ok(true)),
            ("[!a]", "!", Ok(true)),
            ("[]a]", "]", Err(())),
            ("[-]", "-", Err(())),
            ("[x-]", "x", Err(())),
            ("[-x]", "x", Err(())),
            ("\\", "a", Err(())),
            ("[a-b-c]", "a", Err(())),
            ("[", "a", Err(())),
            ("[^", "a", Err(())),
            ("[^bc", "a", Err(())),
            ("a[", "a", Err(())),
            ("a[", "ab", Err(())),
            ("a[", "x", Err(())),
            ("*x", "xxx", Ok(true)),
        ];
        for (pattern, name, want) in cases {
            let got = go_match(pattern, name).map_err(|_| ());
            assert_eq!(&got, want, "go_match({pattern:?}, {name:?})");
        }
    }

    #[test]
    fn clean_like_go() {
        for (input, want) in [
            ("", "."),
            ("./foo", "foo"),
            ("foo/", "foo"),
            ("/foo", "/foo"),
            ("foo//bar", "foo/bar"),
            ("foo/./bar", "foo/bar"),
            ("foo/../bar", "bar"),
            ("../foo", "../foo"),
            ("../../a/..", "../.."),
            ("/../a", "/a"),
            ("/", "/"),
            ("a/b/../../..", ".."),
        ] {
            assert_eq!(clean_path(input), want, "clean({input:?})");
        }
    }

    #[test]
    fn wildcard_detection() {
        assert!(contains_wildcards("*.rs"));
        assert!(contains_wildcards("a[bc]"));
        assert!(!contains_wildcards("plain"));
        assert!(!contains_wildcards("a\\*b"));
    }
}

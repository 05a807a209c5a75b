//! Parser directives (`# escape=`, `# syntax=`, `# check=`): the block of `# name=value`
//! comment lines at the very top of a Dockerfile, and the lighter `# syntax=` / `# check=`
//! detection a CLI does before choosing a frontend (which also accepts `//` comments, a shebang
//! line and a JSON object).

use super::{ParseError, ParseErrorKind};
use crate::instructions::Directives;

/// Reads `prefix name = value` (spaces allowed around each part); the name starts with a letter
/// and is made of letters and digits; the value is trimmed and not empty.
fn directive_parts<'a>(line: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let blank = |c: char| matches!(c, ' ' | '\t' | '\n' | '\u{0C}' | '\r');
    let rest = line.strip_prefix(prefix)?.trim_start_matches(blank);
    let name_len = rest
        .char_indices()
        .take_while(|&(i, c)| {
            if i == 0 {
                c.is_ascii_alphabetic()
            } else {
                c.is_ascii_alphanumeric()
            }
        })
        .count();
    if name_len == 0 {
        return None;
    }
    let (name, after_name) = rest.split_at(name_len);
    let value = after_name
        .trim_start_matches(blank)
        .strip_prefix('=')?
        .trim_matches(blank);
    if value.is_empty() {
        return None;
    }
    Some((name, value))
}

/// Tracks the directive block while the scanner reads the first lines of a file.
pub(crate) struct DirectiveScanner {
    done: bool,
    seen: Vec<String>,
    lines: usize,
}

impl DirectiveScanner {
    pub(crate) fn new(enabled: bool) -> Self {
        DirectiveScanner {
            done: !enabled,
            seen: Vec::new(),
            lines: 0,
        }
    }

    /// Looks at one line (left-trimmed, no newline) and returns the directive it holds, if
    /// any. The block ends at the first line that is not a known directive; a shebang on
    /// line 1 is skipped.
    pub(crate) fn line(
        &mut self,
        text: &str,
        directives: &mut Directives,
    ) -> Result<Option<Directive>, ParseErrorKind> {
        self.lines += 1;
        if self.done {
            return Ok(None);
        }
        if self.lines == 1 && text.starts_with("#!") {
            return Ok(None);
        }
        let Some((name, value)) = directive_parts(text, "#") else {
            self.done = true;
            return Ok(None);
        };
        let name = name.to_ascii_lowercase();
        if !matches!(name.as_str(), "escape" | "syntax" | "check") {
            // An unknown directive is a comment, and a comment ends the block.
            self.done = true;
            return Ok(None);
        }
        if self.seen.contains(&name) {
            return Err(ParseErrorKind::DuplicateDirective(name));
        }
        match name.as_str() {
            "escape" => {
                directives.escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    other => return Err(ParseErrorKind::InvalidEscape(other.to_string())),
                }
            }
            "syntax" => directives.syntax = Some(value.to_string()),
            _ => directives.check = Some(value.to_string()),
        }
        self.seen.push(name.clone());
        Ok(Some(Directive {
            name,
            value: value.to_string(),
            line: self.lines,
        }))
    }
}

/// One parser directive as written at the top of a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// Lower-cased name: `escape`, `syntax` or `check`.
    pub name: String,
    pub value: String,
    /// 1-based line.
    pub line: usize,
}

/// The known parser directives at the top of `source`, in order (unknown ones end the block
/// and are not returned). Fails on a repeated directive or a bad escape character.
pub fn parse_directives(source: &str) -> Result<Vec<Directive>, ParseError> {
    let source = source.strip_prefix('\u{FEFF}').unwrap_or(source);
    let mut scanner = DirectiveScanner::new(true);
    let mut directives = Directives::default();
    let mut found = Vec::new();
    for (index, line) in source.lines().enumerate() {
        let text = line.trim_end_matches('\r').trim_start();
        match scanner.line(text, &mut directives) {
            Ok(Some(directive)) => found.push(directive),
            Ok(None) if scanner.done => break,
            Ok(None) => {}
            Err(kind) => return Err(ParseError::at(kind, index + 1, 1, index + 1)),
        }
    }
    Ok(found)
}

/// A directive found by [`detect_syntax`] or [`detect_check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectedDirective {
    /// The first word of the value (`docker/dockerfile:1` of `docker/dockerfile:1 // opts`).
    pub value: String,
    /// The whole value.
    pub cmdline: String,
    /// 1-based line it was found on.
    pub line: usize,
}

/// Finds `# syntax=` (or `// syntax=`, or a whole-file JSON object with a `syntax` key) in the
/// directive block at the top of `source`.
pub fn detect_syntax(source: &str) -> Option<DetectedDirective> {
    detect(source, "syntax", true)
}

/// Finds `# check=` in the directive block at the top of `source` (`//` is not accepted).
pub fn detect_check(source: &str) -> Option<DetectedDirective> {
    detect(source, "check", false)
}

fn detect(source: &str, wanted: &str, allow_slashes: bool) -> Option<DetectedDirective> {
    let source = source.strip_prefix('\u{FEFF}').unwrap_or(source);
    if allow_slashes
        && source.starts_with('{')
        && let Ok(serde_json::Value::Object(map)) = serde_json::from_str(source)
    {
        let value = map.get(wanted)?.as_str()?;
        return Some(detected(value, 1));
    }
    for (index, line) in source.lines().enumerate() {
        let line = line.trim_end_matches('\r').trim_start();
        if index == 0 && line.starts_with("#!") {
            continue;
        }
        let parts = directive_parts(line, "#").or_else(|| {
            if allow_slashes {
                directive_parts(line, "//")
            } else {
                None
            }
        });
        let (name, value) = parts?;
        if name.eq_ignore_ascii_case(wanted) {
            return Some(detected(value, index + 1));
        }
    }
    None
}

fn detected(value: &str, line: usize) -> DetectedDirective {
    DetectedDirective {
        value: value.split_whitespace().next().unwrap_or("").to_string(),
        cmdline: value.to_string(),
        line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directive_line_shapes() {
        assert_eq!(directive_parts("# escape = `", "#"), Some(("escape", "`")));
        assert_eq!(
            directive_parts("#syntax=a b ", "#"),
            Some(("syntax", "a b"))
        );
        assert_eq!(directive_parts("# smth", "#"), None);
        assert_eq!(directive_parts("# key =", "#"), None);
        assert_eq!(directive_parts("# 1x=y", "#"), None);
    }

    #[test]
    fn escape_must_be_backslash_or_backtick() {
        let mut scanner = DirectiveScanner::new(true);
        let mut directives = Directives::default();
        assert!(matches!(
            scanner.line("# escape=x", &mut directives),
            Err(ParseErrorKind::InvalidEscape(_))
        ));
    }

    #[test]
    fn repeated_directive_is_an_error() {
        let mut scanner = DirectiveScanner::new(true);
        let mut directives = Directives::default();
        scanner.line("# escape=`", &mut directives).unwrap();
        assert!(matches!(
            scanner.line("# ESCAPE=\\", &mut directives),
            Err(ParseErrorKind::DuplicateDirective(_))
        ));
    }
}

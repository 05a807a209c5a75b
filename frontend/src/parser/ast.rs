//! The generic syntax tree in BuildKit's shape and the line scanner that builds it: physical
//! lines → parser directives, comments, continuations and heredoc bodies → one [`Node`] per
//! instruction (keyword as written, flags, arguments split per instruction, heredocs, lines).
//! [`dump`] prints the tree in the conformance `result` format.

use super::directives::DirectiveScanner;
use super::heredoc::heredocs_from_line;
use super::words::{JsonArgs, parse_json_array, parse_words, split_command, split_separators};
use super::{ParseError, ParseErrorKind};
use crate::instructions::{Directives, Heredoc, Location, Warning};

/// BuildKit reads lines with a 64 KiB buffer; a longer physical line is an error.
pub const MAX_LINE_LEN: usize = 65535;

/// A parsed Dockerfile before typing: instructions in source order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ast {
    pub directives: Directives,
    pub children: Vec<Node>,
    /// Empty continuation lines and similar non-fatal findings.
    pub warnings: Vec<Warning>,
    /// From the first instruction's start line to the last one's end line.
    pub location: Location,
}

/// One instruction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Node {
    /// The instruction word as written (`RUN`, `run`, `Run`, or an unknown word).
    pub keyword: String,
    /// Leading `--flag[=value]` words, quotes removed.
    pub flags: Vec<String>,
    /// The arguments, split per instruction (see the conformance README). ENV and LABEL give
    /// `key value sep` triples; an unknown instruction gives one empty argument.
    pub args: Vec<String>,
    /// The arguments came from a JSON array (exec form).
    pub json: bool,
    /// ONBUILD's trigger instruction.
    pub sub: Option<Box<Node>>,
    /// Heredocs opened on the line, bodies attached (for ONBUILD they sit on the ONBUILD node).
    pub heredocs: Vec<Heredoc>,
    pub location: Location,
    /// 1-based column of the keyword on its first line.
    pub column: usize,
    /// The logical line: continuations joined, comments and heredoc bodies left out.
    pub original: String,
    /// Comment lines directly above the instruction, `#` and surrounding blanks removed.
    pub comments: Vec<String>,
}

impl Node {
    /// The keyword lower-cased, for dispatch.
    pub fn command(&self) -> String {
        self.keyword.to_lowercase()
    }

    /// The documentation comment for `name` among the comments above this node: the first
    /// comment line starting with `name ` (BuildKit's convention for ARGs and stages), without
    /// that prefix.
    pub fn doc_comment(&self, name: &str) -> Option<&str> {
        if name.is_empty() {
            return None;
        }
        self.comments
            .iter()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
    }

    /// Only RUN, COPY and ADD in shell form (or ONBUILD wrapping one) read heredoc bodies.
    fn can_contain_heredoc(&self) -> bool {
        let node = match (&self.sub, self.command().as_str()) {
            (Some(sub), "onbuild") => sub.as_ref(),
            _ => self,
        };
        matches!(node.command().as_str(), "run" | "copy" | "add") && !node.json
    }
}

/// Options for the scanner: the escape character to start with and whether parser directives
/// are read (not for a lone ONBUILD trigger, which has none).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScanOptions {
    pub escape: char,
    pub read_directives: bool,
}

/// Builds the syntax tree of a whole Dockerfile.
pub(crate) fn scan(source: &str, options: ScanOptions) -> Result<Ast, ParseError> {
    let mut directives = Directives {
        escape: options.escape,
        ..Directives::default()
    };
    let mut directive_scanner = DirectiveScanner::new(options.read_directives);
    let lines: Vec<&str> = source.split_inclusive('\n').collect();
    let mut reader = LineReader {
        lines: &lines,
        next: 0,
    };
    let mut children: Vec<Node> = Vec::new();
    let mut warnings = Vec::new();
    let mut comments: Vec<String> = Vec::new();

    while let Some(raw) = reader.next_line()? {
        let line_no = reader.next;
        let without_newline = trim_newline(raw);
        let text = without_newline.trim_start();
        let is_comment = text.starts_with('#');
        if let Some(comment) = text.strip_prefix('#') {
            let comment = comment.trim();
            if comment.is_empty() {
                comments.clear();
            } else {
                comments.push(comment.to_string());
            }
        }
        directive_scanner
            .line(text, &mut directives)
            .map_err(|kind| ParseError::at(kind, line_no, 1, line_no))?;
        let escape = directives.escape;
        let text = if is_comment { "" } else { text };
        let (first, mut complete) = trim_continuation(text, escape);
        if complete && first.is_empty() {
            if !is_comment {
                // A blank line ends a run of doc comments.
                comments.clear();
            }
            continue;
        }
        let start_line = line_no;
        let indent = &without_newline[..without_newline.len() - text.len()];
        let column = indent.chars().count() + 1;
        let mut logical = first.to_string();
        let mut had_empty_continuation = false;
        while !complete {
            let Some(raw) = reader.next_line()? else {
                break;
            };
            let continuation = trim_newline(raw);
            let trimmed = continuation.trim_start();
            if trimmed.starts_with('#') {
                continue;
            }
            if trimmed.is_empty() {
                had_empty_continuation = true;
                continue;
            }
            let (part, done) = trim_continuation(continuation, escape);
            logical.push_str(part);
            complete = done;
        }
        let end_line = reader.next;
        if had_empty_continuation {
            warnings.push(Warning {
                location: Location {
                    start_line,
                    end_line,
                },
                message: format!("Empty continuation line found in: {logical}"),
            });
        }

        let mut node = new_node(&logical, escape)
            .map_err(|kind| ParseError::at(kind, start_line, column, end_line))?;
        if node.can_contain_heredoc() {
            let heredocs = heredocs_from_line(&logical).map_err(|e| {
                ParseError::at(ParseErrorKind::from(e), start_line, column, end_line)
            })?;
            for mut heredoc in heredocs {
                let mut terminated = false;
                while let Some(body_line) = reader.next_line()? {
                    let mut candidate = trim_newline(body_line);
                    if heredoc.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == heredoc.name {
                        terminated = true;
                        break;
                    }
                    heredoc.content.push_str(body_line);
                }
                if !terminated {
                    return Err(ParseError::at(
                        ParseErrorKind::UnterminatedHeredoc { name: heredoc.name },
                        start_line,
                        column,
                        reader.next,
                    ));
                }
                node.heredocs.push(heredoc);
            }
        }
        let location = Location {
            start_line,
            end_line: reader.next,
        };
        node.set_position(location, column);
        node.comments = std::mem::take(&mut comments);
        children.push(node);
    }

    let (Some(first), Some(last)) = (children.first(), children.last()) else {
        return Err(ParseError::at(
            ParseErrorKind::NoInstructions,
            reader.next,
            1,
            reader.next,
        ));
    };
    let location = Location {
        start_line: first.location.start_line,
        end_line: last.location.end_line,
    };
    Ok(Ast {
        directives,
        children,
        warnings,
        location,
    })
}

impl Node {
    fn set_position(&mut self, location: Location, column: usize) {
        self.location = location;
        self.column = column;
        if let Some(sub) = self.sub.as_mut() {
            sub.set_position(location, column);
        }
    }
}

/// Hands out physical lines (with their line endings) and counts them.
struct LineReader<'a> {
    lines: &'a [&'a str],
    /// Lines handed out so far = the 1-based number of the last one.
    next: usize,
}

impl<'a> LineReader<'a> {
    fn next_line(&mut self) -> Result<Option<&'a str>, ParseError> {
        let Some(&line) = self.lines.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        if line.strip_suffix('\n').unwrap_or(line).len() > MAX_LINE_LEN {
            return Err(ParseError::at(
                ParseErrorKind::LineTooLong { max: MAX_LINE_LEN },
                self.next,
                1,
                self.next,
            ));
        }
        if self.next == 1 {
            return Ok(Some(line.strip_prefix('\u{FEFF}').unwrap_or(line)));
        }
        Ok(Some(line))
    }
}

fn trim_newline(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

/// Removes a trailing continuation (the escape char, then optional blanks) and says whether the
/// instruction is complete. An escape char preceded by another escape char is literal, so
/// `\\` at the end of a line does not continue it.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let without_blanks = line.trim_end_matches([' ', '\t']);
    if let Some(before) = without_blanks.strip_suffix(escape)
        && !before.ends_with(escape)
    {
        return (before, false);
    }
    (line, true)
}

/// Builds the node of one logical line (BuildKit's `newNodeFromLine` plus the per-instruction
/// line parsers).
pub(crate) fn new_node(line: &str, escape: char) -> Result<Node, ParseErrorKind> {
    let split = split_command(line);
    let mut node = Node {
        keyword: split.keyword.to_string(),
        flags: split.flags,
        original: line.to_string(),
        ..Node::default()
    };
    let rest = split.args;
    match node.command().as_str() {
        "add" | "copy" | "volume" => match parse_json_array(rest) {
            JsonArgs::Strings(args) => {
                node.args = args;
                node.json = true;
            }
            JsonArgs::NotStringArray => return Err(ParseErrorKind::NotStringArray),
            JsonArgs::NotJson => node.args = split_separators(rest),
        },
        "cmd" | "entrypoint" | "run" | "shell" => {
            let (args, json) = maybe_json(rest)?;
            node.args = args;
            node.json = json;
        }
        "arg" => node.args = parse_words(rest, escape),
        "env" => node.args = name_values(rest, "ENV", escape)?,
        "label" => node.args = name_values(rest, "LABEL", escape)?,
        "expose" | "from" => node.args = split_separators(rest),
        "healthcheck" => {
            let (args, json) = health_args(rest)?;
            node.args = args;
            node.json = json;
        }
        "maintainer" | "stopsignal" | "user" | "workdir" => {
            if !rest.is_empty() {
                node.args = vec![rest.to_string()];
            }
        }
        "onbuild" => {
            if !rest.is_empty() {
                node.sub = Some(Box::new(new_node(rest, escape)?));
            }
        }
        // Unknown instructions keep their keyword; typing rejects them with a suggestion.
        _ => node.args = vec![String::new()],
    }
    Ok(node)
}

/// JSON array → its strings; otherwise the whole text as one shell-form argument.
fn maybe_json(rest: &str) -> Result<(Vec<String>, bool), ParseErrorKind> {
    if rest.is_empty() {
        return Ok((Vec::new(), false));
    }
    match parse_json_array(rest) {
        JsonArgs::Strings(args) => Ok((args, true)),
        JsonArgs::NotStringArray => Err(ParseErrorKind::NotStringArray),
        JsonArgs::NotJson => Ok((vec![rest.to_string()], false)),
    }
}

/// HEALTHCHECK: the type word, then the command like CMD.
fn health_args(rest: &str) -> Result<(Vec<String>, bool), ParseErrorKind> {
    let kind_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    if kind_end == 0 {
        return Ok((Vec::new(), false));
    }
    let kind = &rest[..kind_end];
    let command = rest[kind_end..].trim_start();
    let (command_args, json) = maybe_json(command)?;
    let mut args = Vec::with_capacity(command_args.len() + 1);
    args.push(kind.to_string());
    args.extend(command_args);
    Ok((args, json))
}

/// ENV and LABEL: `key value sep` triples. `KEY rest of line` (legacy) gives sep `""`;
/// `k=v k2=v2` gives sep `"="` with values as written (quotes kept).
fn name_values(rest: &str, instruction: &str, escape: char) -> Result<Vec<String>, ParseErrorKind> {
    let words = parse_words(rest, escape);
    let Some(first) = words.first() else {
        return Ok(Vec::new());
    };
    if !first.contains('=') {
        let (key, value) = super::words::split_once_separator(rest);
        return match value {
            Some(value) if !value.is_empty() => {
                Ok(vec![key.to_string(), value.to_string(), String::new()])
            }
            _ => Err(ParseErrorKind::KeyValueArity {
                instruction: instruction.to_string(),
            }),
        };
    }
    let mut args = Vec::with_capacity(words.len() * 3);
    for word in &words {
        let Some((key, value)) = word.split_once('=') else {
            return Err(ParseErrorKind::MissingEquals {
                instruction: instruction.to_string(),
                word: word.clone(),
            });
        };
        args.push(key.to_string());
        args.push(value.to_string());
        args.push("=".to_string());
    }
    Ok(args)
}

/// Prints the tree in BuildKit's dump format: one `(keyword ["flags"] "args")` per line.
pub fn dump(ast: &Ast) -> String {
    ast.children
        .iter()
        .map(|node| format!("({})", dump_node(node)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn dump_node(node: &Node) -> String {
    let mut out = node.keyword.to_lowercase();
    if !node.flags.is_empty() {
        let flags: Vec<String> = node.flags.iter().map(|f| go_quote(f)).collect();
        out.push_str(" [");
        out.push_str(&flags.join(" "));
        out.push(']');
    }
    for arg in &node.args {
        out.push(' ');
        out.push_str(&go_quote(arg));
    }
    if let Some(sub) = &node.sub {
        out.push_str(" (");
        out.push_str(&dump_node(sub));
        out.push(')');
    }
    out
}

/// Quotes like Go's `strconv.Quote`: printable characters as they are, the usual C escapes,
/// `\xHH` for other ASCII controls, `\uHHHH`/`\UHHHHHHHH` for other non-printable characters.
pub fn go_quote(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{07}' => out.push_str("\\a"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0C}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{0B}' => out.push_str("\\v"),
            c if is_go_printable(c) => out.push(c),
            c if (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) < 0x10000 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push('"');
    out
}

/// An approximation of Go's `unicode.IsPrint`: everything but controls, spaces other than
/// U+0020, format characters, private-use code points and non-characters.
fn is_go_printable(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    let code = c as u32;
    let format_or_private = matches!(
        code,
        0x00AD
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xE000..=0xF8FF
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
            | 0xF0000..=0x10FFFF
    );
    let noncharacter = (0xFDD0..=0xFDEF).contains(&code) || (code & 0xFFFE) == 0xFFFE;
    !format_or_private && !noncharacter
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_like_go() {
        assert_eq!(go_quote("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(go_quote("\u{0}\u{7f}\t"), r#""\x00\x7f\t""#);
        assert_eq!(go_quote("♥ ☃"), "\"♥ ☃\"");
        assert_eq!(go_quote("\u{a0}\u{feff}"), r#""\u00a0\ufeff""#);
        assert_eq!(go_quote("\u{e0001}"), r#""\U000e0001""#);
    }

    #[test]
    fn continuation_rules() {
        assert_eq!(trim_continuation("echo \\", '\\'), ("echo ", false));
        assert_eq!(trim_continuation("echo \\  \t", '\\'), ("echo ", false));
        assert_eq!(trim_continuation("\\", '\\'), ("", false));
        assert_eq!(trim_continuation("a\\\\", '\\'), ("a\\\\", true));
        assert_eq!(trim_continuation("a`", '`'), ("a", false));
        assert_eq!(trim_continuation("a\\", '`'), ("a\\", true));
    }

    #[test]
    fn unknown_instruction_has_one_empty_arg() {
        let node = new_node("FOO bar baz", '\\').unwrap();
        assert_eq!(dump_node(&node), r#"foo """#);
    }

    #[test]
    fn onbuild_nests() {
        let node = new_node(r#"ONBUILD COPY --from=x . /"#, '\\').unwrap();
        assert_eq!(dump_node(&node), r#"onbuild (copy ["--from=x"] "." "/")"#);
    }
}

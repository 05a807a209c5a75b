//! Dockerfile text → syntax tree (BuildKit's AST shape, printable in the conformance `result`
//! format) → typed instructions.
//!
//! Two stages, as in BuildKit: [`parse_ast`] knows only lines, directives, continuations,
//! comments, heredocs and per-instruction argument splitting, and accepts any keyword;
//! [`parse_dockerfile`] then types each node into [`crate::instructions`], checking arity,
//! flags, stage structure and values. Nothing here expands variables: words stay as written.

mod ast;
mod directives;
mod duration;
mod flags;
mod heredoc;
pub(crate) mod suggest;
mod typed;
mod words;

pub use ast::{Ast, MAX_LINE_LEN, Node, dump, go_quote};
pub use directives::{DetectedDirective, Directive, detect_check, detect_syntax, parse_directives};
pub use duration::{DurationError, parse_go_duration};
pub use heredoc::{
    HeredocWordError, chomp_heredoc_content, heredocs_from_line, parse_heredoc_word,
};
pub use words::{JsonArgs, parse_json_array, parse_words};

use crate::instructions::{Dockerfile, Instruction};

/// What went wrong, without the position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("file with no instructions")]
    NoInstructions,
    #[error("dockerfile line greater than max allowed size of {max}")]
    LineTooLong { max: usize },
    #[error("invalid escape token '{0}' does not match ` or \\")]
    InvalidEscape(String),
    #[error("only one {0} parser directive can be used")]
    DuplicateDirective(String),
    #[error("when using JSON array syntax, arrays must be comprised of strings only")]
    NotStringArray,
    #[error("{instruction} must have two arguments")]
    KeyValueArity { instruction: String },
    #[error(
        "Syntax error - can't find = in {word:?}. Must be of the form: name=value \
         ({instruction})"
    )]
    MissingEquals { instruction: String, word: String },
    #[error("unterminated heredoc: no line {name:?} ends it before the end of the file")]
    UnterminatedHeredoc { name: String },
    #[error(transparent)]
    HeredocWord(#[from] HeredocWordError),
    #[error("unknown instruction: {keyword}{}", did_you_mean(.suggestion))]
    UnknownInstruction {
        keyword: String,
        suggestion: Option<String>,
    },
    #[error("unknown flag: --{flag} for {instruction}{}", did_you_mean_flag(.suggestion))]
    UnknownFlag {
        instruction: String,
        flag: String,
        suggestion: Option<String>,
    },
    /// An instruction whose arguments or flags do not fit it (arity, values, placement).
    #[error("{0}")]
    Invalid(String),
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean {s}?)"),
        None => String::new(),
    }
}

fn did_you_mean_flag(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean --{s}?)"),
        None => String::new(),
    }
}

/// A parse failure and where it happened: `Dockerfile:3:1: unknown instruction: RUNN (did you
/// mean RUN?)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{kind}", location_prefix(.file, *.line, *.column))]
pub struct ParseError {
    /// The file name as given to [`parse_dockerfile`]; empty when unknown.
    pub file: String,
    /// 1-based line where the offending instruction starts (0 if not tied to a line).
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Last line of the offending instruction.
    pub end_line: usize,
    pub kind: ParseErrorKind,
}

fn location_prefix(file: &str, line: usize, column: usize) -> String {
    match (file.is_empty(), line) {
        (true, 0) => String::new(),
        (true, _) => format!("line {line}:{column}: "),
        (false, 0) => format!("{file}: "),
        (false, _) => format!("{file}:{line}:{column}: "),
    }
}

impl ParseError {
    pub(crate) fn at(kind: ParseErrorKind, line: usize, column: usize, end_line: usize) -> Self {
        ParseError {
            file: String::new(),
            line,
            column,
            end_line,
            kind,
        }
    }

    fn in_file(mut self, file: &str) -> Self {
        self.file = file.to_string();
        self
    }
}

/// Parses Dockerfile text into its syntax tree: directives, instructions (any keyword),
/// warnings. Fails on a file without instructions, a line of 64 KiB or more, a bad directive,
/// a JSON array with non-string elements, a legacy `ENV`/`LABEL` without a value or an
/// unterminated heredoc.
pub fn parse_ast(source: &str) -> Result<Ast, ParseError> {
    ast::scan(
        source,
        ast::ScanOptions {
            escape: '\\',
            read_directives: true,
        },
    )
}

/// Parses a Dockerfile into typed stages. `file_name` only labels errors (it may be empty).
/// Fails as [`parse_ast`] does, and on any instruction that is unknown, has the wrong number
/// of arguments, an unknown, repeated or malformed flag, a bad value (durations, stage names,
/// SHELL not in JSON form) or comes before the first FROM (other than ARG).
pub fn parse_dockerfile(source: &str, file_name: &str) -> Result<Dockerfile, ParseError> {
    let ast = parse_ast(source).map_err(|e| e.in_file(file_name))?;
    typed::to_dockerfile(ast).map_err(|e| e.in_file(file_name))
}

/// Parses one instruction given as text, e.g. an ONBUILD trigger stored in a base image's
/// config (`RUN make`, or `COPY <<EOF /x` followed by its heredoc body lines). Fails as
/// [`parse_dockerfile`] does, when the text holds no or several instructions, or when it is a
/// FROM (which is not an instruction of a stage).
pub fn parse_instruction(text: &str, escape: char) -> Result<Instruction, ParseError> {
    let ast = ast::scan(
        text,
        ast::ScanOptions {
            escape,
            read_directives: false,
        },
    )?;
    typed::single_instruction(ast)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_display_has_file_line_column() {
        let err = parse_dockerfile("FROM a\nRUNN x\n", "Dockerfile").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Dockerfile:2:1: unknown instruction: RUNN (did you mean RUN?)"
        );
        let err = ParseError::at(ParseErrorKind::NoInstructions, 0, 0, 0);
        assert_eq!(err.to_string(), "file with no instructions");
    }
}

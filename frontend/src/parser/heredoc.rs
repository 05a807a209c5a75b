//! Heredoc detection: which words of a RUN/COPY/ADD line open a heredoc (`<<EOF`, `<<-'EOF'`,
//! `3<<EOF`, `<< EOF`), what the terminator is and whether the body is expanded. Reading the
//! bodies themselves is done by the line scanner in `ast`, which owns the physical lines.

use crate::instructions::Heredoc;

/// A heredoc word that cannot be read (an unterminated quote in the delimiter).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid heredoc delimiter {word:?}: unterminated quote")]
pub struct HeredocWordError {
    pub word: String,
}

/// Classifies one shell word: `Ok(Some(..))` when it opens a heredoc (content left empty),
/// `Ok(None)` when it is an ordinary word. The word has the form `[digits]<<[-][blanks]WORD`
/// where WORD is a single shell word without `<`; quoting any part of WORD disables expansion
/// of the body.
pub fn parse_heredoc_word(word: &str) -> Result<Option<Heredoc>, HeredocWordError> {
    let digits_len = word.bytes().take_while(u8::is_ascii_digit).count();
    let (digits, after_digits) = word.split_at(digits_len);
    let Some(after_marker) = after_digits.strip_prefix("<<") else {
        return Ok(None);
    };
    let (chomp, after_chomp) = match after_marker.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, after_marker),
    };
    // Go's `\s`: ASCII blanks only.
    let delimiter = after_chomp.trim_start_matches([' ', '\t', '\n', '\u{0C}', '\r']);
    if delimiter.is_empty() || delimiter.contains('<') {
        return Ok(None);
    }
    let lexed = lex_delimiter(delimiter).ok_or_else(|| HeredocWordError {
        word: word.to_string(),
    })?;
    let Some((name, quoted)) = lexed else {
        return Ok(None);
    };
    // An fd too large for u32 is not a real fd; Docker parses it leniently to 0.
    let fd = if digits.is_empty() {
        None
    } else {
        Some(digits.parse::<u32>().unwrap_or(0))
    };
    Ok(Some(Heredoc {
        name,
        content: String::new(),
        expand: !quoted,
        chomp,
        fd,
    }))
}

/// Lexes a heredoc delimiter as shell words with quote removal. `None` for an unterminated
/// quote; `Some(None)` if it is not exactly one word; otherwise the unquoted word and whether
/// any quote took effect.
fn lex_delimiter(text: &str) -> Option<Option<(String, bool)>> {
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        match ch {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                quoted = true;
                loop {
                    match chars.next() {
                        None => return None,
                        Some('\'') => break,
                        Some(c) => word.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                quoted = true;
                loop {
                    match chars.next() {
                        None => return None,
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            None => return None,
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                        },
                        Some(c) => word.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(c) = chars.next() {
                    word.push(c);
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    if words.len() != 1 {
        return Some(None);
    }
    words.pop().map(|w| Some((w, quoted)))
}

/// Splits a whole instruction line into raw shell words (quotes and escapes kept) the way
/// BuildKit's lexer does for heredoc detection: blanks right after an unquoted `<<` or `<<-`
/// stay in the word, so `<<  EOF` is one word. `None` if a quote is left open.
fn raw_shell_words(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' | '"' => {
                in_word = true;
                word.push(ch);
                loop {
                    let c = chars.next()?;
                    word.push(c);
                    if c == ch {
                        break;
                    }
                    if c == '\\' && ch == '"' {
                        word.push(chars.next()?);
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.push(ch);
                if let Some(c) = chars.next() {
                    word.push(c);
                }
            }
            '<' if chars.peek() == Some(&'<') => {
                in_word = true;
                word.push_str("<<");
                chars.next();
                if chars.peek() == Some(&'-') {
                    word.push('-');
                    chars.next();
                }
                while let Some(&c) = chars.peek() {
                    if !c.is_whitespace() {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Some(words)
}

/// The heredocs opened on `line`, in order. A line whose quotes do not balance has none (the
/// shell could not run it either; Docker ignores it the same way).
pub fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, HeredocWordError> {
    if !line.contains("<<") {
        return Ok(Vec::new());
    }
    let Some(words) = raw_shell_words(line) else {
        return Ok(Vec::new());
    };
    let mut heredocs = Vec::new();
    for word in words {
        if let Some(heredoc) = parse_heredoc_word(&word)? {
            heredocs.push(heredoc);
        }
    }
    Ok(heredocs)
}

/// Removes leading tabs from every line of a `<<-` heredoc body.
pub fn chomp_heredoc_content(content: &str) -> String {
    content
        .split_inclusive('\n')
        .map(|line| line.trim_start_matches('\t'))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(line: &str) -> Vec<String> {
        heredocs_from_line(line)
            .unwrap()
            .into_iter()
            .map(|h| h.name)
            .collect()
    }

    #[test]
    fn words_that_open_heredocs() {
        let h = parse_heredoc_word("3<<-'EOF'").unwrap().unwrap();
        assert_eq!(
            (h.name.as_str(), h.expand, h.chomp, h.fd),
            ("EOF", false, true, Some(3))
        );
        let h = parse_heredoc_word(r"<<eo\'f").unwrap().unwrap();
        assert_eq!((h.name.as_str(), h.expand), ("eo'f", true));
        let h = parse_heredoc_word(r"<<'e'o\'f").unwrap().unwrap();
        assert_eq!((h.name.as_str(), h.expand), ("eo'f", false));
        assert!(parse_heredoc_word("<<EOF sh").unwrap().is_none());
        assert!(parse_heredoc_word("<<<EOF").unwrap().is_none());
        assert!(parse_heredoc_word("<<'EOF").is_err());
    }

    #[test]
    fn blanks_after_marker_join_the_word() {
        assert_eq!(names("RUN <<  EOF  > foo"), vec!["EOF"]);
        assert_eq!(names("RUN << -EOF"), vec!["-EOF"]);
        assert_eq!(names("RUN <<- EOF"), vec!["EOF"]);
        assert_eq!(names("RUN '<<EOF' \"<<X\""), Vec::<String>::new());
        assert_eq!(names("RUN echo 'open <<EOF"), Vec::<String>::new());
    }

    #[test]
    fn chomp_strips_only_leading_tabs() {
        assert_eq!(chomp_heredoc_content("\t\ta\tb\n  c\n\td"), "a\tb\n  c\nd");
    }
}

//! Splitting one logical instruction line into its parts, the way BuildKit's line parsers do:
//! keyword and rest, leading `--flags`, quote-aware words (quotes kept), whitespace lists and
//! JSON arrays. Nothing here expands variables or removes quotes from arguments: that is the
//! job of `shell` during lowering.

/// The separators BuildKit's `reWhitespace` splits on (ASCII only, no newline).
pub(crate) fn is_separator(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\u{0B}' | '\u{0C}' | '\r')
}

/// Splits `s` on runs of [`is_separator`] characters. An empty `s` gives no parts.
pub(crate) fn split_separators(s: &str) -> Vec<String> {
    s.split(is_separator)
        .filter(|part| !part.is_empty())
        .map(str::to_string)
        .collect()
}

/// Splits `s` at the first run of separators: `("FROM", "a b")`. The rest is not trimmed.
pub(crate) fn split_once_separator(s: &str) -> (&str, Option<&str>) {
    match s.find(is_separator) {
        None => (s, None),
        Some(start) => {
            let after = &s[start..];
            let rest = after.trim_start_matches(is_separator);
            (&s[..start], Some(rest))
        }
    }
}

/// The keyword, the leading flags and the trimmed argument text of one logical line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SplitCommand<'a> {
    pub keyword: &'a str,
    pub flags: Vec<String>,
    pub args: &'a str,
}

/// Splits a logical line into keyword, flags and arguments (BuildKit's `splitCommand`).
pub(crate) fn split_command(line: &str) -> SplitCommand<'_> {
    let trimmed = line.trim();
    let (keyword, rest) = split_once_separator(trimmed);
    match rest {
        None => SplitCommand {
            keyword,
            flags: Vec::new(),
            args: "",
        },
        Some(rest) => {
            let (args, flags) = extract_flags(rest);
            SplitCommand {
                keyword,
                flags,
                args: args.trim(),
            }
        }
    }
}

/// Takes the leading `--flag[=value]` words off `line`. Quotes inside a flag word are removed
/// and `\` makes the next character literal (BuildKit always uses `\` here, whatever the
/// escape directive says). Extraction stops at the first word not starting with `--`; a bare
/// `--` ends the flags and is dropped. Returns the remaining text and the flags.
pub(crate) fn extract_flags(line: &str) -> (&str, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let mut flags = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut blank_ok = false;
    let mut chars = line.char_indices();
    while let Some((pos, ch)) = chars.next() {
        match phase {
            Phase::Spaces => {
                if ch.is_whitespace() {
                    continue;
                }
                let starts_flag = ch == '-' && line[pos + 1..].starts_with('-');
                if !starts_flag {
                    return (&line[pos..], flags);
                }
                phase = Phase::Word;
                word.push(ch);
            }
            Phase::Word => {
                if ch.is_whitespace() {
                    if word == "--" {
                        return (&line[pos..], flags);
                    }
                    if blank_ok || !word.is_empty() {
                        flags.push(std::mem::take(&mut word));
                    }
                    word.clear();
                    blank_ok = false;
                    phase = Phase::Spaces;
                    continue;
                }
                if ch == '\'' || ch == '"' {
                    phase = Phase::Quote(ch);
                    blank_ok = true;
                    continue;
                }
                if ch == '\\' {
                    match chars.next() {
                        Some((_, next)) => word.push(next),
                        None => continue,
                    }
                    continue;
                }
                word.push(ch);
            }
            Phase::Quote(quote) => {
                if ch == quote {
                    phase = Phase::Word;
                    continue;
                }
                if ch == '\\' {
                    match chars.next() {
                        Some((_, next)) => word.push(next),
                        None => phase = Phase::Word,
                    }
                    continue;
                }
                word.push(ch);
            }
        }
    }
    if phase != Phase::Spaces && word != "--" && (blank_ok || !word.is_empty()) {
        flags.push(word);
    }
    ("", flags)
}

/// Splits `rest` into words on unquoted whitespace, keeping quotes and escapes in the words
/// (BuildKit's `parseWords`, used by ENV, LABEL and ARG). An escape char at the very end is
/// dropped.
pub fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut blank_ok = false;
    let mut chars = rest.chars();
    while let Some(ch) = chars.next() {
        if phase == Phase::Spaces {
            if ch.is_whitespace() {
                continue;
            }
            phase = Phase::Word;
        }
        if let Phase::Quote(quote) = phase {
            if ch == quote {
                phase = Phase::Word;
                word.push(ch);
                continue;
            }
            // Inside single quotes nothing is escaped.
            if ch == escape && quote != '\'' {
                match chars.next() {
                    Some(next) => {
                        word.push(ch);
                        word.push(next);
                    }
                    None => phase = Phase::Word,
                }
                continue;
            }
            word.push(ch);
            continue;
        }
        if ch.is_whitespace() {
            if blank_ok || !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            blank_ok = false;
            phase = Phase::Spaces;
            continue;
        }
        if ch == '\'' || ch == '"' {
            phase = Phase::Quote(ch);
            blank_ok = true;
            word.push(ch);
            continue;
        }
        if ch == escape {
            // Unquoted: keep the escape and the escaped char, even a quote; an escape at the
            // very end is dropped.
            if let Some(next) = chars.next() {
                word.push(ch);
                word.push(next);
            }
            continue;
        }
        word.push(ch);
    }
    if phase != Phase::Spaces && (blank_ok || !word.is_empty()) {
        words.push(word);
    }
    words
}

/// The outcome of trying to read argument text as a JSON array.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonArgs {
    /// A JSON array of strings.
    Strings(Vec<String>),
    /// Not JSON (or not an array): the caller falls back to shell form.
    NotJson,
    /// Valid JSON array with a non-string element: a hard error in Docker.
    NotStringArray,
}

/// Reads `rest` as a JSON array of strings, as Docker's exec form does: the text (after
/// left-trim) must start with `[` and begin with one complete JSON value. Like BuildKit (which
/// decodes one value from a stream), text after the closing `]` is ignored.
pub fn parse_json_array(rest: &str) -> JsonArgs {
    let text = rest.trim_start();
    if !text.starts_with('[') {
        return JsonArgs::NotJson;
    }
    let first = serde_json::Deserializer::from_str(text)
        .into_iter::<serde_json::Value>()
        .next();
    match first {
        Some(Ok(serde_json::Value::Array(items))) => {
            let mut strings = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    serde_json::Value::String(s) => strings.push(s),
                    _ => return JsonArgs::NotStringArray,
                }
            }
            JsonArgs::Strings(strings)
        }
        _ => JsonArgs::NotJson,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_stop_at_first_non_flag_word() {
        let (rest, flags) = extract_flags("--from=build --chmod=755 a /b");
        assert_eq!(flags, vec!["--from=build", "--chmod=755"]);
        assert_eq!(rest, "a /b");
    }

    #[test]
    fn flag_quotes_and_escapes_are_removed() {
        let (rest, flags) = extract_flags(r#"--mount="type=cache" --x=a\ b cmd"#);
        assert_eq!(flags, vec!["--mount=type=cache", "--x=a b"]);
        assert_eq!(rest, "cmd");
    }

    #[test]
    fn double_dash_ends_flags() {
        let (rest, flags) = extract_flags("--a=1 -- x y");
        assert_eq!(flags, vec!["--a=1"]);
        assert_eq!(rest.trim(), "x y");
        let (rest, flags) = extract_flags("--");
        assert!(flags.is_empty());
        assert_eq!(rest, "");
    }

    #[test]
    fn only_flags_leave_no_rest() {
        let (rest, flags) = extract_flags("--network=none");
        assert_eq!(flags, vec!["--network=none"]);
        assert_eq!(rest, "");
    }

    #[test]
    fn single_dash_is_not_a_flag() {
        let (rest, flags) = extract_flags("-x y");
        assert!(flags.is_empty());
        assert_eq!(rest, "-x y");
    }

    #[test]
    fn words_keep_quotes_and_escapes() {
        assert_eq!(
            parse_words(r#"abc="123 456" def"#, '\\'),
            vec![r#"abc="123 456""#, "def"]
        );
        assert_eq!(parse_words(r"foo\ bar", '\\'), vec![r"foo\ bar"]);
        assert_eq!(parse_words("a ''", '\\'), vec!["a", "''"]);
        assert_eq!(parse_words("a \\", '\\'), vec!["a"]);
    }

    #[test]
    fn json_arrays() {
        assert_eq!(
            parse_json_array(r#" ["a", "b"]"#),
            JsonArgs::Strings(vec!["a".into(), "b".into()])
        );
        assert_eq!(parse_json_array(r#"["a", 1]"#), JsonArgs::NotStringArray);
        assert_eq!(parse_json_array("['a']"), JsonArgs::NotJson);
        assert_eq!(
            parse_json_array(r#"["a"] && b"#),
            JsonArgs::Strings(vec!["a".into()])
        );
        assert_eq!(parse_json_array("echo"), JsonArgs::NotJson);
    }

    #[test]
    fn command_split_on_tabs() {
        let split = split_command("COPY\t.\t/go");
        assert_eq!(split.keyword, "COPY");
        assert_eq!(split.args, ".\t/go");
        let split = split_command("  HEALTHCHECK  ");
        assert_eq!(split.keyword, "HEALTHCHECK");
        assert_eq!(split.args, "");
    }
}

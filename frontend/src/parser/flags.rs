//! Instruction flags (`--from=build`, `--link`, `--mount=…` repeated): checking the words the
//! syntax tree collected against what each instruction accepts, as BuildKit's `BFlags` does.

use std::collections::HashMap;

use super::ParseErrorKind;
use super::suggest::suggest;

/// How a flag takes its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlagKind {
    /// `--link`, `--link=true`, `--link=false`.
    Bool,
    /// `--from=x`, at most once.
    String,
    /// `--mount=x`, any number of times.
    Strings,
}

/// The flags given to one instruction, by name.
#[derive(Debug, Default)]
pub(crate) struct Flags {
    bools: HashMap<&'static str, bool>,
    strings: HashMap<&'static str, String>,
    lists: HashMap<&'static str, Vec<String>>,
}

impl Flags {
    /// `None` when the flag was not given.
    pub(crate) fn bool(&self, name: &str) -> Option<bool> {
        self.bools.get(name).copied()
    }

    pub(crate) fn string(&self, name: &str) -> Option<String> {
        self.strings.get(name).cloned()
    }

    pub(crate) fn strings(&self, name: &str) -> Vec<String> {
        self.lists.get(name).cloned().unwrap_or_default()
    }
}

/// Checks `raw` (each `--name[=value]`) against `specs` for `instruction` (upper-case name used
/// in messages). Unknown, repeated and malformed flags are errors.
pub(crate) fn parse_flags(
    instruction: &str,
    raw: &[String],
    specs: &[(&'static str, FlagKind)],
) -> Result<Flags, ParseErrorKind> {
    let mut flags = Flags::default();
    let mut seen: Vec<&'static str> = Vec::new();
    for word in raw {
        let Some(body) = word.strip_prefix("--") else {
            return Err(ParseErrorKind::Invalid(format!(
                "{instruction}: flag should start with --: {word}"
            )));
        };
        let (name, value) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (body, None),
        };
        let Some(&(spec_name, kind)) = specs.iter().find(|(spec, _)| *spec == name) else {
            let names: Vec<&str> = specs.iter().map(|(spec, _)| *spec).collect();
            return Err(ParseErrorKind::UnknownFlag {
                instruction: instruction.to_string(),
                flag: name.to_string(),
                suggestion: suggest(name, &names).map(str::to_string),
            });
        };
        if kind != FlagKind::Strings && seen.contains(&spec_name) {
            return Err(ParseErrorKind::Invalid(format!(
                "duplicate flag specified: --{name} ({instruction} accepts it only once)"
            )));
        }
        seen.push(spec_name);
        match kind {
            FlagKind::Bool => {
                let parsed = match value.map(str::to_ascii_lowercase).as_deref() {
                    None => true,
                    Some("true") => true,
                    Some("false") => false,
                    Some("") => {
                        return Err(ParseErrorKind::Invalid(format!(
                            "missing a value on flag: --{name}"
                        )));
                    }
                    Some(_) => {
                        return Err(ParseErrorKind::Invalid(format!(
                            "expecting boolean value for flag --{name}, not: {}",
                            value.unwrap_or_default()
                        )));
                    }
                };
                flags.bools.insert(spec_name, parsed);
            }
            FlagKind::String | FlagKind::Strings => {
                let Some(value) = value else {
                    return Err(ParseErrorKind::Invalid(format!(
                        "missing a value on flag: --{name}"
                    )));
                };
                if kind == FlagKind::String {
                    flags.strings.insert(spec_name, value.to_string());
                } else {
                    flags
                        .lists
                        .entry(spec_name)
                        .or_default()
                        .push(value.to_string());
                }
            }
        }
    }
    Ok(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    const COPY: &[(&str, FlagKind)] = &[
        ("from", FlagKind::String),
        ("link", FlagKind::Bool),
        ("exclude", FlagKind::Strings),
    ];

    fn raw(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn values_by_kind() {
        let flags = parse_flags(
            "COPY",
            &raw(&["--from=a", "--link=FALSE", "--exclude=x", "--exclude=y"]),
            COPY,
        )
        .unwrap();
        assert_eq!(flags.string("from").as_deref(), Some("a"));
        assert_eq!(flags.bool("link"), Some(false));
        assert_eq!(flags.strings("exclude"), vec!["x", "y"]);
        assert_eq!(flags.bool("missing"), None);
    }

    #[test]
    fn errors() {
        let err = parse_flags("COPY", &raw(&["--form=a"]), COPY).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown flag: --form for COPY (did you mean --from?)"
        );
        let err = parse_flags("COPY", &raw(&["--from=a", "--from=b"]), COPY).unwrap_err();
        assert!(err.to_string().contains("duplicate flag specified: --from"));
        let err = parse_flags("COPY", &raw(&["--from"]), COPY).unwrap_err();
        assert!(err.to_string().contains("missing a value on flag: --from"));
        let err = parse_flags("COPY", &raw(&["--link=yes"]), COPY).unwrap_err();
        assert!(err.to_string().contains("expecting boolean value"));
        let err = parse_flags("COPY", &raw(&["--link="]), COPY).unwrap_err();
        assert!(err.to_string().contains("missing a value"));
    }
}

//! BuildKit's shell-lexer corpus (`shell-expansion/envVarTest` and `wordsTest`) run through
//! [`Lexer`], plus a property test that no input makes the lexer panic.

use std::collections::BTreeMap;
use std::path::PathBuf;

use kiln_frontend::shell::{Lexer, LexerOptions};
use proptest::prelude::*;

fn corpus(name: &str) -> String {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "../../shared/conformance/parser/shell-expansion",
        name,
    ]
    .iter()
    .collect();
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn env_var_test_corpus() {
    let env: BTreeMap<String, String> = [
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let lexer = Lexer::new('\\');
    let (mut passed, mut skipped) = (0, 0);
    let mut failures = Vec::new();
    for (index, raw_line) in corpus("envVarTest").lines().enumerate() {
        let line_number = index + 1;
        if raw_line.starts_with('#') || raw_line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = raw_line.trim().split('|').map(str::trim).collect();
        assert_eq!(fields.len(), 3, "line {line_number}: {raw_line:?}");
        let (platform, input, expected) = (fields[0], fields[1], fields[2]);
        match platform {
            "A" | "U" => {}
            "W" => {
                skipped += 1;
                continue;
            }
            other => panic!("line {line_number}: unknown platform {other:?}"),
        }
        let result = lexer.process_word(input, &env);
        let ok = match (&result, expected) {
            (Err(_), "error") => true,
            (Ok(expansion), expected) => expected != "error" && expansion.value == expected,
            (Err(_), _) => false,
        };
        if ok {
            passed += 1;
        } else {
            failures.push(format!(
                "line {line_number}: {input:?} expected {expected:?}, got {result:?}"
            ));
        }
    }
    println!(
        "envVarTest: {passed} passed, {} failed, {skipped} skipped (Windows-only)",
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(passed > 200, "only {passed} cases ran");
}

#[test]
fn words_test_corpus() {
    let lexer = Lexer::new('\\');
    let mut env = BTreeMap::new();
    let mut passed = 0;
    let mut failures = Vec::new();
    for (index, line) in corpus("wordsTest").lines().enumerate() {
        let line_number = index + 1;
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(assignment) = line.strip_prefix("ENV ") {
            // Trailing spaces of the value are significant.
            let assignment = assignment.trim_start_matches(' ');
            let (name, value) = assignment.split_once('=').unwrap_or((assignment, ""));
            env.insert(name.to_string(), value.to_string());
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(fields.len(), 2, "line {line_number}: {line:?}");
        let input = fields[0].trim();
        let expected: Vec<&str> = fields[1].trim_start_matches(' ').split(',').collect();
        let result = match lexer.process_words(input, &env) {
            Ok(expansion) => expansion.words,
            Err(_) => vec!["error".to_string()],
        };
        if result == expected {
            passed += 1;
        } else {
            failures.push(format!(
                "line {line_number}: {input:?} expected {expected:?}, got {result:?}"
            ));
        }
    }
    println!("wordsTest: {passed} passed, {} failed", failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(passed > 20, "only {passed} cases ran");
}

fn lexers() -> [Lexer; 3] {
    [
        Lexer::new('\\'),
        Lexer::new('`'),
        Lexer::new('\\').with_options(LexerOptions {
            raw_quotes: true,
            raw_escapes: true,
            skip_unset: true,
        }),
    ]
}

fn check_never_panics(input: &str) {
    let env: BTreeMap<String, String> = [("a", "x * y"), ("b", ""), ("c", "\\*/?")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for lexer in lexers() {
        let word = lexer.process_word(input, &env);
        let words = lexer.process_words(input, &env);
        // Both entry points run the same scan: they fail on the same inputs.
        assert_eq!(word.is_ok(), words.is_ok(), "{input:?}");
    }
}

proptest! {
    // Failures print their minimal input; there is no regressions file to keep.
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_input_never_panics(input in any::<String>()) {
        check_never_panics(&input);
    }

    #[test]
    fn shell_like_input_never_panics(input in "[$\\\\`{}:#%/?*+='\" abc-]{0,40}") {
        check_never_panics(&input);
    }

    #[test]
    fn plain_text_is_unchanged(input in "[a-zA-Z0-9_./:=,@+-]{0,40}") {
        let env = BTreeMap::<String, String>::new();
        let expansion = Lexer::default().process_word(&input, &env).unwrap();
        prop_assert_eq!(expansion.value, input);
    }
}

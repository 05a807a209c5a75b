//! BuildKit's parser conformance data (`shared/conformance/parser`): AST dumps of the positive
//! test files, rejection of the negative ones, line spans, and every table of
//! `misc_cases.json` and `heredoc/heredoc_cases.json`.

use std::fs;
use std::path::{Path, PathBuf};

use kiln_frontend::instructions::{CommandForm, Healthcheck, InstructionKind};
use kiln_frontend::parser::{
    JsonArgs, chomp_heredoc_content, detect_check, detect_syntax, dump, heredocs_from_line,
    parse_ast, parse_directives, parse_dockerfile, parse_heredoc_word, parse_json_array,
    parse_words,
};
use serde_json::Value;

fn conformance_dir() -> PathBuf {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/conformance/parser"
    ))
    .to_path_buf()
}

fn read_json(relative: &str) -> Value {
    let path = conformance_dir().join(relative);
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn case_dirs(folder: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(conformance_dir().join(folder))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_dir())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn positive_testfiles_dump_exactly() {
    let mut failures = Vec::new();
    let dirs = case_dirs("testfiles");
    for dir in &dirs {
        let source = fs::read_to_string(dir.join("Dockerfile")).unwrap();
        let expected = fs::read_to_string(dir.join("result")).unwrap();
        match parse_ast(&source) {
            Ok(ast) => {
                let actual = dump(&ast) + "\n";
                if actual != expected {
                    failures.push(format!(
                        "{}:\n--- expected\n{expected}--- actual\n{actual}",
                        dir.display()
                    ));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", dir.display())),
        }
    }
    eprintln!(
        "testfiles: {} of {} dump exactly",
        dirs.len() - failures.len(),
        dirs.len()
    );
    assert_eq!(dirs.len(), 33, "expected 33 positive cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn negative_testfiles_are_rejected() {
    let dirs = case_dirs("testfiles-negative");
    let mut rejected = 0;
    for dir in &dirs {
        let source = fs::read_to_string(dir.join("Dockerfile")).unwrap();
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let result = parse_dockerfile(&source, "Dockerfile");
        let err = result.expect_err(&format!("{name} must be rejected"));
        let message = err.to_string();
        let expected = match name.as_str() {
            "empty_dockerfile" | "only_comments" => "file with no instructions",
            "env_no_value" => "ENV must have two arguments",
            "shykes-nested-json" => "arrays must be comprised of strings only",
            other => panic!("unknown negative case {other}"),
        };
        assert!(message.contains(expected), "{name}: {message}");
        // The AST stage alone already rejects all of them.
        assert!(parse_ast(&source).is_err(), "{name}");
        rejected += 1;
    }
    eprintln!("testfiles-negative: {rejected} of {} rejected", dirs.len());
    assert_eq!(rejected, 4);
}

#[test]
fn line_numbers() {
    let cases = read_json("misc_cases.json");
    let spans = &cases["line_numbers"];
    let source =
        fs::read_to_string(conformance_dir().join(spans["dockerfile"].as_str().unwrap())).unwrap();
    let ast = parse_ast(&source).unwrap();
    let root: Vec<usize> = serde_json::from_value(spans["root"].clone()).unwrap();
    assert_eq!(
        vec![ast.location.start_line, ast.location.end_line],
        root,
        "root span"
    );
    let children: Vec<Vec<usize>> = serde_json::from_value(spans["children"].clone()).unwrap();
    let actual: Vec<Vec<usize>> = ast
        .children
        .iter()
        .map(|n| vec![n.location.start_line, n.location.end_line])
        .collect();
    assert_eq!(actual, children);
    eprintln!("line_numbers: root + {} children match", children.len());
}

#[test]
fn word_splitting_table() {
    let cases = read_json("misc_cases.json");
    let list = cases["parse_words"]["cases"].as_array().unwrap();
    for case in list {
        let input = case["input"].as_str().unwrap();
        assert_eq!(
            parse_words(input, '\\'),
            strings(&case["words"]),
            "{input:?}"
        );
    }
    eprintln!("parse_words: {} cases", list.len());
    assert_eq!(list.len(), 8);
}

#[test]
fn json_array_table() {
    let cases = read_json("misc_cases.json");
    let valid = cases["json_arrays"]["valid"].as_array().unwrap();
    for case in valid {
        let input = case["input"].as_str().unwrap();
        assert_eq!(
            parse_json_array(input),
            JsonArgs::Strings(strings(&case["strings"])),
            "{input:?}"
        );
        // The same text as CMD is exec form with those strings.
        let ast = parse_ast(&format!("CMD {input}")).unwrap();
        assert!(ast.children[0].json, "{input:?}");
        assert_eq!(ast.children[0].args, strings(&case["strings"]));
    }
    let not_strings = cases["json_arrays"]["not_string_array"].as_array().unwrap();
    for input in not_strings {
        let input = input.as_str().unwrap();
        assert_eq!(
            parse_json_array(input),
            JsonArgs::NotStringArray,
            "{input:?}"
        );
        let err = parse_ast(&format!("FROM a\nRUN {input}")).unwrap_err();
        assert!(err.to_string().contains("strings only"), "{err}");
        assert_eq!(err.line, 2);
    }
    eprintln!(
        "json_arrays: {} valid, {} not-string-array",
        valid.len(),
        not_strings.len()
    );
    assert_eq!(valid.len() + not_strings.len(), 16);
}

#[test]
fn parser_directive_table() {
    let cases = read_json("misc_cases.json");
    let list = cases["parser_directives"]["cases"].as_array().unwrap();
    for case in list {
        let input = case["input"].as_str().unwrap();
        let found = parse_directives(input).unwrap();
        let expected: Vec<(String, String)> = case["directives"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["name"].as_str().unwrap().to_string(),
                    d["value"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let actual: Vec<(String, String)> = found.into_iter().map(|d| (d.name, d.value)).collect();
        assert_eq!(actual, expected, "{input:?}");
        // The same block in front of an instruction parses, with the escape applied.
        let ast = parse_ast(&format!("{input}FROM a\n")).unwrap();
        assert_eq!(ast.directives.escape, '\\');
    }
    eprintln!("parser_directives: {} cases", list.len());
    assert_eq!(list.len(), 2);
}

#[test]
fn syntax_and_check_detection_tables() {
    let cases = read_json("misc_cases.json");
    let syntax = cases["detect_syntax"]["cases"].as_array().unwrap();
    for case in syntax {
        let mut input = case["input"].as_str().unwrap().to_string();
        if case["input_hex_prefix"].as_str() == Some("EFBBBF") {
            input.insert(0, '\u{FEFF}');
        }
        let found = detect_syntax(&input);
        assert_eq!(
            found.is_some(),
            case["found"].as_bool().unwrap(),
            "{input:?}"
        );
        if let Some(found) = found {
            if let Some(reference) = case["ref"].as_str() {
                assert_eq!(found.value, reference, "{input:?}");
            }
            if let Some(cmdline) = case["cmdline"].as_str() {
                assert_eq!(found.cmdline, cmdline, "{input:?}");
            }
            if let Some(line) = case["line"].as_u64() {
                assert_eq!(found.line as u64, line, "{input:?}");
            }
        }
    }
    let check = cases["check_directive"]["cases"].as_array().unwrap();
    for case in check {
        let input = case["input"].as_str().unwrap();
        let found = detect_check(input);
        assert_eq!(
            found.is_some(),
            case["found"].as_bool().unwrap(),
            "{input:?}"
        );
        if let Some(found) = found {
            if let Some(value) = case["value"].as_str() {
                assert_eq!(found.value, value, "{input:?}");
            }
            if let Some(cmdline) = case["cmdline"].as_str() {
                assert_eq!(found.cmdline, cmdline, "{input:?}");
            }
            if let Some(line) = case["line"].as_u64() {
                assert_eq!(found.line as u64, line, "{input:?}");
            }
        }
    }
    eprintln!(
        "detect_syntax: {} cases, check_directive: {} cases",
        syntax.len(),
        check.len()
    );
    assert_eq!(syntax.len() + check.len(), 15);
}

#[test]
fn empty_continuation_warnings() {
    let cases = read_json("misc_cases.json");
    let case = &cases["empty_continuation_warning"];
    let ast = parse_ast(case["input"].as_str().unwrap()).unwrap();
    assert_eq!(
        ast.warnings.len() as u64,
        case["warnings"].as_u64().unwrap()
    );
    let texts: Vec<String> = ast
        .warnings
        .iter()
        .map(|w| {
            w.message
                .strip_prefix("Empty continuation line found in: ")
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(texts, strings(&case["warning_instructions"]));
    eprintln!("empty_continuation_warning: {} warnings match", texts.len());
}

#[test]
fn line_too_long() {
    let long = format!("FROM a\nRUN {}\n", "x".repeat(65536 - 4));
    let err = parse_ast(&long).unwrap_err();
    assert!(
        err.to_string()
            .contains("dockerfile line greater than max allowed size of 65535"),
        "{err}"
    );
    assert_eq!(err.line, 2);
    let fits = format!("FROM a\nRUN {}\n", "x".repeat(65535 - 4));
    assert!(parse_ast(&fits).is_ok());
    eprintln!("line_too_long: 65536-byte line rejected, 65535 accepted");
}

#[test]
fn instruction_error_table() {
    let cases = read_json("misc_cases.json");
    let table = &cases["instruction_errors"];
    let list = table["cases"].as_array().unwrap();
    for case in list {
        let source = case["dockerfile"].as_str().unwrap();
        let expected = case["error"].as_str().unwrap();
        let err = parse_dockerfile(source, "Dockerfile")
            .expect_err(&format!("{source:?} must be rejected"));
        assert!(
            err.to_string().contains(expected),
            "{source:?}: got {err}, want {expected}"
        );
        assert_eq!(err.line, 1, "{source:?}");
    }

    let shell_form = &table["healthcheck_shell_form"];
    let source = format!("FROM a\n{}", shell_form["dockerfile"].as_str().unwrap());
    let dockerfile = parse_dockerfile(&source, "").unwrap();
    let test = strings(&shell_form["test"]);
    match &dockerfile.stages[0].instructions[0].kind {
        InstructionKind::Healthcheck(Healthcheck::Cmd { command, .. }) => {
            assert_eq!(test[0], "CMD-SHELL");
            assert_eq!(command, &CommandForm::Shell(test[1].clone()));
        }
        other => panic!("unexpected {other:?}"),
    }

    let intervals = table["healthcheck_interval"].as_object().unwrap();
    for (interval, outcome) in intervals {
        let source = format!("FROM a\nHEALTHCHECK --interval={interval} CMD true");
        let result = parse_dockerfile(&source, "");
        let outcome = outcome.as_str().unwrap();
        if let Some(message) = outcome.strip_prefix("error: ") {
            let err = result.expect_err(interval);
            assert!(err.to_string().contains(message), "{interval}: {err}");
        } else {
            assert!(result.is_ok(), "{interval}: {result:?}");
        }
    }
    eprintln!(
        "instruction_errors: {} error cases, 1 healthcheck form, {} intervals",
        list.len(),
        intervals.len()
    );
    assert_eq!(list.len(), 20);
}

#[test]
fn doc_comments() {
    let cases = read_json("misc_cases.json");
    let case = &cases["doc_comments"];
    let ast = parse_ast(case["input"].as_str().unwrap()).unwrap();
    let expect = &case["expect"];
    let doc = |index: usize, name: &str| {
        ast.children[index]
            .doc_comment(name)
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(doc(0, "foo"), expect["meta_arg_foo_doc"].as_str().unwrap());
    assert_eq!(doc(1, "base"), expect["stage0_doc"].as_str().unwrap());
    assert_eq!(doc(2, "foo"), expect["stage_arg_foo_doc"].as_str().unwrap());
    assert_eq!(doc(3, "bar"), expect["stage_arg_bar_doc"].as_str().unwrap());
    assert_eq!(doc(3, "baz"), expect["stage_arg_baz_doc"].as_str().unwrap());
    eprintln!("doc_comments: 5 facts match");
}

#[test]
fn heredoc_extraction() {
    let cases = read_json("heredoc/heredoc_cases.json");
    let extract = &cases["extract_heredocs"];
    let source = fs::read_to_string(
        conformance_dir()
            .join("heredoc")
            .join(extract["dockerfile"].as_str().unwrap()),
    )
    .unwrap();
    let ast = parse_ast(&source).unwrap();
    let expected = extract["instructions"].as_array().unwrap();
    assert_eq!(ast.children.len(), expected.len());
    for case in expected {
        let index = case["index"].as_u64().unwrap() as usize;
        let node = &ast.children[index];
        assert_eq!(node.original, case["instruction"].as_str().unwrap());
        let want = case["heredocs"].as_array().cloned().unwrap_or_default();
        assert_eq!(node.heredocs.len(), want.len(), "instruction {index}");
        for (heredoc, want) in node.heredocs.iter().zip(&want) {
            assert_eq!(heredoc.name, want["name"].as_str().unwrap(), "{index}");
            assert_eq!(
                heredoc.content,
                want["content"].as_str().unwrap(),
                "{index}"
            );
            assert_eq!(heredoc.expand, want["expand"].as_bool().unwrap(), "{index}");
            assert_eq!(heredoc.chomp, want["chomp"].as_bool().unwrap(), "{index}");
            assert_eq!(
                u64::from(heredoc.fd.unwrap_or(0)),
                want["fd"].as_u64().unwrap(),
                "{index}"
            );
        }
    }

    let json_form = &cases["json_form_never_heredoc"];
    let source = fs::read_to_string(
        conformance_dir()
            .join("heredoc")
            .join(json_form["dockerfile"].as_str().unwrap()),
    )
    .unwrap();
    let ast = parse_ast(&source).unwrap();
    let instructions = strings(&json_form["instructions"]);
    for (i, text) in instructions.iter().enumerate() {
        let node = &ast.children[i + 1];
        assert_eq!(&node.original, text);
        assert!(node.heredocs.is_empty(), "{text}");
    }
    eprintln!(
        "extract_heredocs: {} instructions, json_form_never_heredoc: {}",
        expected.len(),
        instructions.len()
    );
    assert_eq!(expected.len(), 28);
}

#[test]
fn heredoc_word_tables() {
    let cases = read_json("heredoc/heredoc_cases.json");

    let chomp = &cases["chomp_content"];
    assert_eq!(
        chomp_heredoc_content(chomp["input"].as_str().unwrap()),
        chomp["expected"].as_str().unwrap()
    );

    let words = &cases["heredoc_word"];
    let valid = strings(&words["valid_name_EOF"]);
    for word in &valid {
        let heredoc = parse_heredoc_word(word)
            .unwrap()
            .unwrap_or_else(|| panic!("{word}"));
        assert_eq!(heredoc.name, "EOF", "{word}");
    }
    let errors = strings(&words["error_unterminated_quote"]);
    for word in &errors {
        assert!(parse_heredoc_word(word).is_err(), "{word}");
    }
    let not_heredoc = strings(&words["not_a_heredoc"]);
    for word in &not_heredoc {
        assert_eq!(parse_heredoc_word(word).unwrap(), None, "{word}");
    }

    let lines = cases["heredocs_from_line"]["cases"].as_array().unwrap();
    for case in lines {
        let line = case["line"].as_str().unwrap();
        let names: Vec<String> = heredocs_from_line(line)
            .unwrap()
            .into_iter()
            .map(|h| h.name)
            .collect();
        assert_eq!(names, strings(&case["names"]), "{line}");
    }

    // Only ADD, COPY, RUN and ONBUILD wrapping one of them read heredoc bodies.
    let allowing = strings(&cases["instructions_allowing_heredoc"]);
    for keyword in ["ADD", "COPY", "RUN"] {
        assert!(allowing.iter().any(|a| a == keyword));
        let ast = parse_ast(&format!("{keyword} <<EOF /x\nbody\nEOF\n")).unwrap();
        assert_eq!(ast.children.len(), 1, "{keyword}");
        assert_eq!(ast.children[0].heredocs[0].content, "body\n");
        let ast = parse_ast(&format!("ONBUILD {keyword} <<EOF /x\nbody\nEOF\n")).unwrap();
        assert_eq!(ast.children.len(), 1, "ONBUILD {keyword}");
        assert_eq!(ast.children[0].heredocs[0].content, "body\n");
    }
    for keyword in ["USER", "CMD", "ENTRYPOINT", "ONBUILD CMD"] {
        let ast = parse_ast(&format!("{keyword} <<EOF\nEOF\n")).unwrap();
        assert_eq!(ast.children.len(), 2, "{keyword}");
        assert!(ast.children[0].heredocs.is_empty());
    }
    eprintln!(
        "heredoc_word: {} valid, {} errors, {} not; heredocs_from_line: {}; chomp: 1",
        valid.len(),
        errors.len(),
        not_heredoc.len(),
        lines.len()
    );
    assert_eq!(valid.len() + errors.len() + not_heredoc.len(), 20);
}

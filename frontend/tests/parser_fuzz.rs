//! Property tests: arbitrary text and generated Dockerfile-shaped text never make the parser
//! (`parse_ast`, `dump`, `parse_dockerfile`, `parse_instruction`) or `parse_mount` panic, and
//! what they return is consistent (spans inside the file, typed parse implies AST parse, stored
//! ONBUILD triggers parse again).
//!
//! 2000 cases per property by default; for a longer run set `PROPTEST_CASES`, e.g.
//! `PROPTEST_CASES=200000 cargo test -p kiln-frontend --test parser_fuzz`.

use kiln_frontend::instructions::{InstructionKind, parse_mount};
use kiln_frontend::parser::{dump, parse_ast, parse_dockerfile, parse_instruction};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

/// Runs every entry point on `source` and checks the invariants that must hold for any input.
fn check_source(source: &str) {
    let line_count = source.split_inclusive('\n').count();
    let ast = parse_ast(source);
    if let Ok(ast) = &ast {
        let _ = dump(ast);
        assert!(!ast.children.is_empty());
        for node in &ast.children {
            assert!(node.location.start_line >= 1);
            assert!(node.location.start_line <= node.location.end_line);
            assert!(node.location.end_line <= line_count);
            assert!(node.column >= 1);
        }
    }
    match parse_dockerfile(source, "Dockerfile") {
        Ok(dockerfile) => {
            assert!(ast.is_ok(), "typed parse succeeded where the AST failed");
            let escape = dockerfile.directives.escape;
            for instruction in dockerfile.stages.iter().flat_map(|s| &s.instructions) {
                if let InstructionKind::Onbuild(onbuild) = &instruction.kind {
                    let reparsed = parse_instruction(&onbuild.trigger, escape)
                        .unwrap_or_else(|e| panic!("trigger {:?}: {e}", onbuild.trigger));
                    // A first line ending in an escaped blank (`\ `) becomes a continuation
                    // when parsed again: Docker stores and re-reads triggers the same way.
                    let first_line = onbuild.trigger.lines().next().unwrap_or_default();
                    if !first_line.trim_end_matches([' ', '\t']).ends_with(escape) {
                        assert_eq!(reparsed.kind, onbuild.instruction.kind);
                    }
                }
                if let InstructionKind::Run(run) = &instruction.kind {
                    for mount in &run.mounts {
                        let _ = parse_mount(mount);
                    }
                }
            }
        }
        Err(err) => {
            let _ = err.to_string();
            assert!(err.line <= line_count.max(1));
        }
    }
    let _ = parse_instruction(source, '\\');
    let _ = parse_instruction(source, '`');
}

fn keyword() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("FROM".to_string()),
        Just("RUN".to_string()),
        Just("run".to_string()),
        Just("CMD".to_string()),
        Just("ENTRYPOINT".to_string()),
        Just("COPY".to_string()),
        Just("ADD".to_string()),
        Just("ENV".to_string()),
        Just("LABEL".to_string()),
        Just("ARG".to_string()),
        Just("EXPOSE".to_string()),
        Just("VOLUME".to_string()),
        Just("USER".to_string()),
        Just("WORKDIR".to_string()),
        Just("SHELL".to_string()),
        Just("STOPSIGNAL".to_string()),
        Just("HEALTHCHECK".to_string()),
        Just("MAINTAINER".to_string()),
        Just("ONBUILD RUN".to_string()),
        Just("ONBUILD COPY".to_string()),
        Just("ONBUILD ONBUILD".to_string()),
        "[A-Za-z]{1,8}",
    ]
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9/._:$-]{1,10}",
        Just("--mount=type=cache,target=/x".to_string()),
        Just("--from=build".to_string()),
        Just("--link".to_string()),
        Just("--interval=5s".to_string()),
        Just("--retries=3".to_string()),
        Just("--".to_string()),
        Just("--x=\"a b\"".to_string()),
        Just("AS".to_string()),
        Just("CMD".to_string()),
        Just("NONE".to_string()),
        Just("<<EOF".to_string()),
        Just("<<-'EOF'".to_string()),
        Just("3<<X".to_string()),
        Just("<< EOF".to_string()),
        Just("\"<<EOF\"".to_string()),
        Just("a=b".to_string()),
        Just("k=\"v w\"".to_string()),
        Just("'single quoted'".to_string()),
        Just("\"unterminated".to_string()),
        Just("[\"a\", \"b\"]".to_string()),
        Just("[\"a\", 1]".to_string()),
        Just("[".to_string()),
        Just("\\".to_string()),
        Just("`".to_string()),
        Just("#".to_string()),
        Just("♥".to_string()),
        Just("\t".to_string()),
    ]
}

fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (keyword(), prop::collection::vec(token(), 0..6), prop::bool::ANY).prop_map(
            |(keyword, tokens, continued)| {
                let mut line = format!("{keyword} {}", tokens.join(" "));
                if continued {
                    line.push_str(" \\");
                }
                line
            }
        ),
        1 => Just("# comment".to_string()),
        1 => Just("# escape=`".to_string()),
        1 => Just("# syntax=docker/dockerfile:1".to_string()),
        1 => Just(String::new()),
        1 => Just("   ".to_string()),
        1 => Just("EOF".to_string()),
        1 => Just("\tEOF".to_string()),
        1 => Just("X".to_string()),
        1 => Just("  indented continuation".to_string()),
        1 => Just("\\".to_string()),
    ]
}

fn dockerfile() -> impl Strategy<Value = String> {
    (
        prop::bool::ANY,
        prop::collection::vec(line(), 0..16),
        prop::bool::ANY,
    )
        .prop_map(|(start_with_from, lines, crlf)| {
            let newline = if crlf { "\r\n" } else { "\n" };
            let mut text = String::new();
            if start_with_from {
                text.push_str("FROM scratch");
                text.push_str(newline);
            }
            text.push_str(&lines.join(newline));
            text
        })
}

fn mount_value() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        Just("type=bind".to_string()),
        Just("type=cache".to_string()),
        Just("type=tmpfs".to_string()),
        Just("type=secret".to_string()),
        Just("type=ssh".to_string()),
        Just("type=bogus".to_string()),
        "(target|dst|source|src|from|id|env)=[a-z/._]{0,8}",
        "(ro|rw|readonly|readwrite|required)(=(true|false|1|maybe))?",
        "(uid|gid|mode)=[0-9a-z-]{0,12}",
        "size=[0-9.]{0,8}[kmgtpKMGTPiIbB ]{0,3}",
        "sharing=(shared|private|locked|x)",
        "\"[a-z=,\"]{0,8}\"?",
        "[a-z]{0,6}",
    ];
    prop::collection::vec(field, 0..7).prop_map(|fields| fields.join(","))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_text_never_panics(source in any::<String>()) {
        check_source(&source);
    }

    #[test]
    fn dockerfile_alphabet_never_panics(source in "[ -~\t\r\n♥é\u{a0}\u{feff}]{0,300}") {
        check_source(&source);
    }

    #[test]
    fn generated_dockerfiles_never_panic(source in dockerfile()) {
        check_source(&source);
    }

    #[test]
    fn arbitrary_mount_values_never_panic(value in any::<String>()) {
        let _ = parse_mount(&value);
    }

    #[test]
    fn generated_mount_values_never_panic(value in mount_value()) {
        if let Ok(mount) = parse_mount(&value) {
            // Secrets always end up with something to mount or expose.
            if mount.kind == kiln_frontend::instructions::MountKind::Secret {
                prop_assert!(mount.target.is_some() || mount.env.is_some());
            }
        }
    }
}

/// Regression: inputs that once needed care.
#[test]
fn known_tricky_inputs() {
    for source in [
        "",
        "\\",
        "FROM a\nRUN \\",
        "FROM a\nRUN <<EOF",
        "FROM a\nONBUILD",
        "FROM a\nONBUILD <<EOF",
        "FROM a\nHEALTHCHECK \t",
        "\u{feff}",
        "\u{feff}FROM a",
        "# escape=`\nFROM a\nRUN x `",
        "FROM a\nCOPY <<EOF",
        "FROM a\nONBUILD RUN <<-EOF\n\tEOF\n",
        "FROM a\nRUN --mount=\"unterminated x",
        "FROM a\r\nRUN a\\\r\n b\r\n",
        "FROM a\nLABEL \u{a0}",
        "FROM a\nENV a\u{a0}b",
        "FROM a\nHEALTHCHECK CMD\u{85}x",
        // Found by proptest: a trigger ending in an escaped blank.
        "FROM scratch\nONBUILD RUN \"<<EOF\" \\ \\",
    ] {
        check_source(source);
    }
}

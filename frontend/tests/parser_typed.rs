//! Typed parsing: every instruction and flag of the Dockerfile reference, stage structure,
//! ONBUILD triggers, `parse_instruction`, and the wording and position of errors.

use std::time::Duration;

use kiln_frontend::instructions::{
    ArgDecl, CommandForm, Dockerfile, Healthcheck, Instruction, InstructionKind, KeyValue, Location,
};
use kiln_frontend::parser::{ParseErrorKind, parse_dockerfile, parse_instruction};

fn parse(source: &str) -> Dockerfile {
    parse_dockerfile(source, "Dockerfile").unwrap_or_else(|e| panic!("{source:?}: {e}"))
}

/// The kind of the only instruction of the only stage of `FROM scratch\n<line>`.
fn only(line: &str) -> InstructionKind {
    let dockerfile = parse(&format!("FROM scratch\n{line}\n"));
    assert_eq!(dockerfile.stages.len(), 1);
    let instructions = &dockerfile.stages[0].instructions;
    assert_eq!(instructions.len(), 1, "{line}");
    instructions[0].kind.clone()
}

/// The error message of `FROM scratch\n<line>` (which must fail).
fn error(line: &str) -> String {
    parse_dockerfile(&format!("FROM scratch\n{line}\n"), "Dockerfile")
        .expect_err(line)
        .to_string()
}

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: value.into(),
    }
}

#[test]
fn from_with_platform_and_name() {
    let dockerfile =
        parse("ARG GO=1.22\nFROM --platform=$BUILDPLATFORM golang:${GO} AS Build\nFROM build\n");
    assert_eq!(dockerfile.meta_args.len(), 1);
    assert_eq!(
        dockerfile.meta_args[0].args,
        vec![ArgDecl {
            name: "GO".into(),
            default: Some("1.22".into())
        }]
    );
    let first = &dockerfile.stages[0];
    assert_eq!(first.from.image, "golang:${GO}");
    assert_eq!(first.from.name.as_deref(), Some("build"));
    assert_eq!(first.from.platform.as_deref(), Some("$BUILDPLATFORM"));
    assert_eq!(
        first.location,
        Location {
            start_line: 2,
            end_line: 2
        }
    );
    assert_eq!(dockerfile.stages[1].from.image, "build");
    assert_eq!(dockerfile.stages[1].from.name, None);
}

#[test]
fn from_errors() {
    let err = parse_dockerfile("FROM a AS 1bad\n", "Dockerfile").unwrap_err();
    assert!(
        err.to_string()
            .contains("invalid name for build stage: \"1bad\""),
        "{err}"
    );
    let err = parse_dockerfile("FROM a b\n", "Dockerfile").unwrap_err();
    assert!(
        err.to_string()
            .contains("FROM requires either one or three arguments")
    );
    let err = parse_dockerfile("FROM\n", "Dockerfile").unwrap_err();
    assert!(
        err.to_string()
            .contains("FROM requires either one or three arguments")
    );
    let err = parse_dockerfile("FROM --plaform=x a\n", "Dockerfile").unwrap_err();
    assert_eq!(
        err.to_string(),
        "Dockerfile:1:1: unknown flag: --plaform for FROM (did you mean --platform?)"
    );
}

#[test]
fn duplicate_stage_names_are_rejected() {
    let err = parse_dockerfile("FROM a AS x\nRUN y\nFROM b AS X\n", "Dockerfile").unwrap_err();
    assert_eq!(
        err.to_string(),
        "Dockerfile:3:1: duplicate stage name \"x\" (first defined on line 1)"
    );
}

#[test]
fn only_arg_may_precede_from() {
    let err = parse_dockerfile("ARG a\n  RUN x\nFROM b\n", "Dockerfile").unwrap_err();
    assert_eq!((err.line, err.column), (2, 3));
    assert!(
        err.to_string()
            .contains("no build stage in current context: RUN"),
        "{err}"
    );
}

#[test]
fn run_forms_and_flags() {
    let kind = only(
        "RUN --mount=type=cache,target=/root/.cache --mount=type=secret,id=x --network=none --security=insecure make all",
    );
    let InstructionKind::Run(run) = kind else {
        panic!("{kind:?}")
    };
    assert_eq!(run.command, CommandForm::Shell("make all".into()));
    assert_eq!(
        run.mounts,
        vec!["type=cache,target=/root/.cache", "type=secret,id=x"]
    );
    assert_eq!(run.network.as_deref(), Some("none"));
    assert_eq!(run.security.as_deref(), Some("insecure"));

    let InstructionKind::Run(run) = only(r#"RUN ["sh", "-c", "echo hi"]"#) else {
        panic!()
    };
    assert_eq!(
        run.command,
        CommandForm::Exec(vec!["sh".into(), "-c".into(), "echo hi".into()])
    );
    assert!(
        error("RUN --network=host --network=none x")
            .contains("duplicate flag specified: --network")
    );
    assert!(
        error("RUN --mout=type=bind x")
            .contains("unknown flag: --mout for RUN (did you mean --mount?)")
    );
    assert!(error("RUN --network=none").contains("RUN requires at least one argument"));
}

#[test]
fn run_heredocs() {
    let dockerfile = parse(
        "FROM a\nRUN <<EOF bash\nset -e\necho $HOME\nEOF\nRUN <<-'X' 3<<Y\n\tone\n\tX\ntwo\nY\n",
    );
    let instructions = &dockerfile.stages[0].instructions;
    let InstructionKind::Run(first) = &instructions[0].kind else {
        panic!()
    };
    assert_eq!(first.command, CommandForm::Shell("<<EOF bash".into()));
    assert_eq!(first.heredocs.len(), 1);
    assert_eq!(first.heredocs[0].content, "set -e\necho $HOME\n");
    assert!(first.heredocs[0].expand);
    assert_eq!(
        instructions[0].location,
        Location {
            start_line: 2,
            end_line: 5
        }
    );
    assert_eq!(instructions[0].original, "RUN <<EOF bash");
    let InstructionKind::Run(second) = &instructions[1].kind else {
        panic!()
    };
    assert_eq!(second.heredocs.len(), 2);
    assert_eq!(second.heredocs[0].name, "X");
    assert!(second.heredocs[0].chomp && !second.heredocs[0].expand);
    assert_eq!(second.heredocs[0].content, "\tone\n");
    assert_eq!(second.heredocs[1].fd, Some(3));
    assert_eq!(second.heredocs[1].content, "two\n");
}

#[test]
fn unterminated_heredoc() {
    let err = parse_dockerfile("FROM a\nRUN <<EOF\necho\n", "Dockerfile").unwrap_err();
    assert!(matches!(
        err.kind,
        ParseErrorKind::UnterminatedHeredoc { .. }
    ));
    assert_eq!((err.line, err.end_line), (2, 3));
    assert!(
        err.to_string()
            .starts_with("Dockerfile:2:1: unterminated heredoc"),
        "{err}"
    );
}

#[test]
fn copy_and_add_flags() {
    let InstructionKind::Copy(copy) = only(
        "COPY --from=build --chown=1000:1000 --chmod=0755 --link --exclude=*.md --exclude=.git --parents a/ b* /dst/",
    ) else {
        panic!()
    };
    assert_eq!(copy.sources, vec!["a/", "b*"]);
    assert_eq!(copy.dest, "/dst/");
    assert_eq!(copy.from.as_deref(), Some("build"));
    assert_eq!(copy.chown.as_deref(), Some("1000:1000"));
    assert_eq!(copy.chmod.as_deref(), Some("0755"));
    assert!(copy.link && copy.parents);
    assert_eq!(copy.excludes, vec!["*.md", ".git"]);
    assert_eq!(
        (copy.checksum, copy.keep_git_dir, copy.unpack),
        (None, false, None)
    );

    let InstructionKind::Add(add) = only(
        "ADD --checksum=sha256:abc --keep-git-dir=true --unpack=false --link=false https://x/y.tgz /y",
    ) else {
        panic!()
    };
    assert_eq!(add.checksum.as_deref(), Some("sha256:abc"));
    assert!(add.keep_git_dir);
    assert_eq!(add.unpack, Some(false));
    assert!(!add.link);
    let InstructionKind::Add(add) = only("ADD --unpack a.tar /") else {
        panic!()
    };
    assert_eq!(add.unpack, Some(true));

    assert!(error("COPY --checksum=sha256:x a b").contains("unknown flag: --checksum for COPY"));
    assert!(error("ADD --from=x a b").contains("unknown flag: --from for ADD"));
    assert!(error("COPY --link=maybe a b").contains("expecting boolean value for flag --link"));
    assert!(error("COPY --from=a --from=b a b").contains("duplicate flag specified: --from"));
    assert!(error("COPY --chown a b").contains("missing a value on flag: --chown"));
}

#[test]
fn copy_json_and_heredoc_sources() {
    let InstructionKind::Copy(copy) = only(r#"COPY ["a b", "c", "/d e/"]"#) else {
        panic!()
    };
    assert_eq!(copy.sources, vec!["a b", "c"]);
    assert_eq!(copy.dest, "/d e/");

    let dockerfile = parse("FROM a\nCOPY <<one <<two /dest/\n1\none\n2\ntwo\n");
    let InstructionKind::Copy(copy) = &dockerfile.stages[0].instructions[0].kind else {
        panic!()
    };
    assert_eq!(copy.sources, vec!["<<one", "<<two"]);
    assert_eq!(copy.heredocs.len(), 2);
    assert_eq!(copy.heredocs[1].content, "2\n");
    let err = parse_dockerfile("FROM a\nCOPY x <<EOF\nEOF\n", "").unwrap_err();
    assert!(
        err.to_string()
            .contains("COPY cannot accept a heredoc as a destination"),
        "{err}"
    );
}

#[test]
fn cmd_entrypoint_shell() {
    assert_eq!(
        only("CMD echo hi"),
        InstructionKind::Cmd(CommandForm::Shell("echo hi".into()))
    );
    assert_eq!(
        only(r#"ENTRYPOINT ["/bin/app", "--flag"]"#),
        InstructionKind::Entrypoint(CommandForm::Exec(vec!["/bin/app".into(), "--flag".into()]))
    );
    assert_eq!(
        only("CMD []"),
        InstructionKind::Cmd(CommandForm::Exec(vec![]))
    );
    assert_eq!(
        only(r#"SHELL ["powershell", "-command"]"#),
        InstructionKind::Shell(vec!["powershell".into(), "-command".into()])
    );
    assert!(
        error("SHELL /bin/bash -c").contains("SHELL requires the arguments to be in JSON form")
    );
    assert!(error("SHELL []").contains("SHELL requires at least one argument"));
    assert!(error("CMD --doit [\"a\"]").contains("unknown flag: --doit for CMD"));
}

#[test]
fn env_label_forms() {
    assert_eq!(
        only(r#"ENV A=1 B="two words" C=x\ y"#),
        InstructionKind::Env(vec![
            kv("A", "1"),
            kv("B", "\"two words\""),
            kv("C", "x\\ y")
        ])
    );
    assert_eq!(
        only("ENV PATH /usr/bin:$PATH"),
        InstructionKind::Env(vec![kv("PATH", "/usr/bin:$PATH")])
    );
    assert_eq!(
        only(r#"LABEL org.opencontainers.image.title="kiln" version=1"#),
        InstructionKind::Label(vec![
            kv("org.opencontainers.image.title", "\"kiln\""),
            kv("version", "1")
        ])
    );
    assert!(error("ENV A=1 B").contains("can't find = in \"B\""));
    assert!(error("LABEL").contains("LABEL requires at least one argument"));
    assert!(error("ENV PATH").contains("ENV must have two arguments"));
}

#[test]
fn arg_declarations() {
    let InstructionKind::Arg(arg) = only(r#"ARG A B=2 C="x y" D="#) else {
        panic!()
    };
    let decls: Vec<(String, Option<String>)> =
        arg.args.into_iter().map(|d| (d.name, d.default)).collect();
    assert_eq!(
        decls,
        vec![
            ("A".into(), None),
            ("B".into(), Some("2".into())),
            ("C".into(), Some("\"x y\"".into())),
            ("D".into(), Some(String::new())),
        ]
    );
    assert!(error("ARG =x").contains("ARG names can not be blank"));
    assert!(error("ARG").contains("ARG requires at least one argument"));
}

#[test]
fn single_argument_instructions() {
    assert_eq!(
        only("USER app:app"),
        InstructionKind::User("app:app".into())
    );
    assert_eq!(
        only("WORKDIR /my dir"),
        InstructionKind::Workdir("/my dir".into())
    );
    assert_eq!(
        only("STOPSIGNAL SIGTERM"),
        InstructionKind::StopSignal("SIGTERM".into())
    );
    assert_eq!(
        only("MAINTAINER Jane <j@x>"),
        InstructionKind::Maintainer("Jane <j@x>".into())
    );
    assert_eq!(
        only("EXPOSE 80 53/udp $PORT"),
        InstructionKind::Expose(vec!["80".into(), "53/udp".into(), "$PORT".into()])
    );
    assert_eq!(
        only(r#"VOLUME ["/a", "/b"]"#),
        InstructionKind::Volume(vec!["/a".into(), "/b".into()])
    );
    assert_eq!(
        only("VOLUME /a /b"),
        InstructionKind::Volume(vec!["/a".into(), "/b".into()])
    );
    assert!(error(r#"VOLUME [" "]"#).contains("VOLUME specified can not be an empty string"));
    assert!(error("USER").contains("USER requires exactly one argument"));
    assert!(error("WORKDIR --x=1 /a").contains("unknown flag: --x for WORKDIR"));
}

#[test]
fn healthcheck_options() {
    let kind = only(
        "HEALTHCHECK --interval=30s --timeout=1m30s --start-period=500ms --start-interval=2s --retries=3 CMD curl -f http://localhost/",
    );
    assert_eq!(
        kind,
        InstructionKind::Healthcheck(Healthcheck::Cmd {
            command: CommandForm::Shell("curl -f http://localhost/".into()),
            interval: Some(Duration::from_secs(30)),
            timeout: Some(Duration::from_secs(90)),
            start_period: Some(Duration::from_millis(500)),
            start_interval: Some(Duration::from_secs(2)),
            retries: Some(3),
        })
    );
    assert_eq!(
        only("HEALTHCHECK NONE"),
        InstructionKind::Healthcheck(Healthcheck::None)
    );
    let InstructionKind::Healthcheck(Healthcheck::Cmd {
        command,
        interval,
        retries,
        ..
    }) = only(r#"HEALTHCHECK --interval=0s --retries=0 CMD ["/check"]"#)
    else {
        panic!()
    };
    assert_eq!(command, CommandForm::Exec(vec!["/check".into()]));
    assert_eq!((interval, retries), (None, None));

    assert!(error("HEALTHCHECK --interval=50ns CMD x").contains("cannot be less than 1ms"));
    assert!(error("HEALTHCHECK --interval=5 CMD x").contains("missing unit"));
    assert!(error("HEALTHCHECK --retries=-1 CMD x").contains("--retries cannot be negative"));
    assert!(error("HEALTHCHECK --retries=many CMD x").contains("--retries"));
    assert!(error("HEALTHCHECK NONE x").contains("HEALTHCHECK NONE takes no arguments"));
    assert!(error("HEALTHCHECK CMD").contains("Missing command after HEALTHCHECK CMD"));
    assert!(error("HEALTHCHECK CONNECT x").contains("Unknown type \"CONNECT\" in HEALTHCHECK"));
    assert!(error("HEALTHCHECK --intervall=1s CMD x").contains("did you mean --interval?"));
}

#[test]
fn onbuild_triggers() {
    let InstructionKind::Onbuild(onbuild) = only("ONBUILD RUN make install") else {
        panic!()
    };
    assert_eq!(onbuild.trigger, "RUN make install");
    assert!(matches!(onbuild.instruction.kind, InstructionKind::Run(_)));

    let dockerfile = parse("FROM a\nONBUILD COPY <<EOF /x\nhello\nEOF\n");
    let InstructionKind::Onbuild(onbuild) = &dockerfile.stages[0].instructions[0].kind else {
        panic!()
    };
    assert_eq!(onbuild.trigger, "COPY <<EOF /x\nhello\nEOF");
    let InstructionKind::Copy(copy) = &onbuild.instruction.kind else {
        panic!()
    };
    assert_eq!(copy.heredocs[0].content, "hello\n");
    // The stored trigger parses back to the same instruction.
    let reparsed = parse_instruction(&onbuild.trigger, '\\').unwrap();
    assert_eq!(reparsed.kind, onbuild.instruction.kind);

    assert!(
        error("ONBUILD ONBUILD RUN x")
            .contains("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    );
    assert!(error("ONBUILD FROM x").contains("FROM isn't allowed as an ONBUILD trigger"));
    assert!(
        error("ONBUILD maintainer x").contains("MAINTAINER isn't allowed as an ONBUILD trigger")
    );
    assert!(error("ONBUILD RUNN x").contains("unknown instruction: RUNN (did you mean RUN?)"));
}

#[test]
fn parse_instruction_for_stored_triggers() {
    let instruction: Instruction = parse_instruction("RUN echo a \\\n  b", '\\').unwrap();
    assert_eq!(
        instruction.kind,
        InstructionKind::Run(match only("RUN echo a   b") {
            InstructionKind::Run(run) => run,
            other => panic!("{other:?}"),
        })
    );
    let instruction = parse_instruction("ENV A=`\nB", '`').unwrap();
    assert_eq!(instruction.kind, InstructionKind::Env(vec![kv("A", "B")]));
    let err = parse_instruction("FROM x", '\\').unwrap_err();
    assert!(err.to_string().contains("FROM"), "{err}");
    let err = parse_instruction("RUN a\nRUN b", '\\').unwrap_err();
    assert!(
        err.to_string()
            .contains("expected exactly one instruction, found 2"),
        "{err}"
    );
    assert!(parse_instruction("", '\\').is_err());
}

#[test]
fn escape_directive_applies() {
    let dockerfile =
        parse("# escape=`\nFROM mcr.microsoft.com/windows\nRUN dir c:\\ `\n  && echo done\n");
    assert_eq!(dockerfile.directives.escape, '`');
    assert_eq!(
        dockerfile.stages[0].instructions[0].kind,
        InstructionKind::Run(match only("RUN dir c:\\   && echo done") {
            InstructionKind::Run(run) => run,
            other => panic!("{other:?}"),
        })
    );
    let dockerfile = parse("# syntax=docker/dockerfile:1\n# check=skip=all\nFROM a\n");
    assert_eq!(
        dockerfile.directives.syntax.as_deref(),
        Some("docker/dockerfile:1")
    );
    assert_eq!(dockerfile.directives.check.as_deref(), Some("skip=all"));
    let err = parse_dockerfile("# escape=x\nFROM a\n", "Dockerfile").unwrap_err();
    assert!(
        err.to_string().contains("invalid escape token 'x'"),
        "{err}"
    );
    let err = parse_dockerfile("# escape=`\n# escape=\\\nFROM a\n", "Dockerfile").unwrap_err();
    assert!(
        err.to_string()
            .contains("only one escape parser directive can be used"),
        "{err}"
    );
}

#[test]
fn warnings_reach_the_dockerfile() {
    let dockerfile = parse("FROM a\nRUN a \\\n\n  b\n");
    assert_eq!(dockerfile.warnings.len(), 1);
    assert_eq!(
        dockerfile.warnings[0].location,
        Location {
            start_line: 2,
            end_line: 4
        }
    );
}

#[test]
fn error_positions_and_suggestions() {
    let err = parse_dockerfile("FROM a\n\n  COPPY a b\n", "ctx/Dockerfile").unwrap_err();
    assert_eq!(err.file, "ctx/Dockerfile");
    assert_eq!((err.line, err.column), (3, 3));
    assert_eq!(
        err.to_string(),
        "ctx/Dockerfile:3:3: unknown instruction: COPPY (did you mean COPY?)"
    );
    let err = parse_dockerfile("FROM a\nfrobnicate x\n", "Dockerfile").unwrap_err();
    assert_eq!(
        err.to_string(),
        "Dockerfile:2:1: unknown instruction: frobnicate"
    );
    let err = parse_dockerfile("", "").unwrap_err();
    assert_eq!(err.to_string(), "file with no instructions");
    let err = parse_dockerfile("# only a comment\n\n", "Dockerfile").unwrap_err();
    assert_eq!(err.to_string(), "Dockerfile:2:1: file with no instructions");
    let err = parse_dockerfile("FROM a\nRUN [\"a\", 1]\n", "Dockerfile").unwrap_err();
    assert_eq!(
        err.to_string(),
        "Dockerfile:2:1: when using JSON array syntax, arrays must be comprised of strings only"
    );
}

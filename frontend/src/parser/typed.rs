//! Syntax tree → typed [`crate::instructions`]: stage structure (meta ARGs, FROM starts a
//! stage), and per instruction its arity, flags and values, with BuildKit's messages.

use std::time::Duration;

use super::ast::{Ast, Node};
use super::duration::parse_go_duration;
use super::flags::{FlagKind, Flags, parse_flags};
use super::heredoc::parse_heredoc_word;
use super::suggest::suggest;
use super::{ParseError, ParseErrorKind};
use crate::instructions::{
    ArgDecl, ArgInstruction, CommandForm, CopyInstruction, Dockerfile, FromInstruction,
    Healthcheck, Heredoc, Instruction, InstructionKind, KeyValue, OnbuildInstruction,
    RunInstruction, Stage,
};

/// Every instruction of the Dockerfile reference, for "did you mean" suggestions.
const INSTRUCTION_NAMES: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

const NO_FLAGS: &[(&str, FlagKind)] = &[];
const FROM_FLAGS: &[(&str, FlagKind)] = &[("platform", FlagKind::String)];
const RUN_FLAGS: &[(&str, FlagKind)] = &[
    ("mount", FlagKind::Strings),
    ("network", FlagKind::String),
    ("security", FlagKind::String),
];
const COPY_FLAGS: &[(&str, FlagKind)] = &[
    ("from", FlagKind::String),
    ("chown", FlagKind::String),
    ("chmod", FlagKind::String),
    ("link", FlagKind::Bool),
    ("exclude", FlagKind::Strings),
    ("parents", FlagKind::Bool),
];
const ADD_FLAGS: &[(&str, FlagKind)] = &[
    ("chown", FlagKind::String),
    ("chmod", FlagKind::String),
    ("link", FlagKind::Bool),
    ("exclude", FlagKind::Strings),
    ("checksum", FlagKind::String),
    ("keep-git-dir", FlagKind::Bool),
    ("unpack", FlagKind::Bool),
];
const HEALTHCHECK_FLAGS: &[(&str, FlagKind)] = &[
    ("interval", FlagKind::String),
    ("timeout", FlagKind::String),
    ("start-period", FlagKind::String),
    ("start-interval", FlagKind::String),
    ("retries", FlagKind::String),
];

/// A node typed: either the FROM that starts a stage or an instruction inside one.
enum Typed {
    From(FromInstruction),
    Instruction(Instruction),
}

fn error_at(node: &Node, kind: ParseErrorKind) -> ParseError {
    ParseError::at(
        kind,
        node.location.start_line,
        node.column,
        node.location.end_line,
    )
}

fn invalid(message: impl Into<String>) -> ParseErrorKind {
    ParseErrorKind::Invalid(message.into())
}

/// Types a whole syntax tree into stages.
pub(crate) fn to_dockerfile(ast: Ast) -> Result<Dockerfile, ParseError> {
    let mut meta_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for node in &ast.children {
        let typed = type_node(node, &node.heredocs).map_err(|kind| error_at(node, kind))?;
        match (typed, stages.last_mut()) {
            (Typed::From(from), _) => {
                // Stage names must be unique: `--from=name` and `FROM name` would be ambiguous.
                if let Some(name) = &from.name
                    && let Some(earlier) = stages
                        .iter()
                        .find(|stage| stage.from.name.as_ref() == Some(name))
                {
                    return Err(error_at(
                        node,
                        invalid(format!(
                            "duplicate stage name {name:?} (first defined on line {})",
                            earlier.location.start_line
                        )),
                    ));
                }
                stages.push(Stage {
                    from,
                    location: node.location,
                    instructions: Vec::new(),
                })
            }
            (Typed::Instruction(instruction), Some(stage)) => stage.instructions.push(instruction),
            (Typed::Instruction(instruction), None) => match instruction.kind {
                InstructionKind::Arg(arg) => meta_args.push(arg),
                _ => {
                    return Err(error_at(
                        node,
                        invalid(format!(
                            "no build stage in current context: {} must come after a FROM \
                             (only ARG may come before the first FROM)",
                            node.keyword.to_uppercase()
                        )),
                    ));
                }
            },
        }
    }
    Ok(Dockerfile {
        directives: ast.directives,
        meta_args,
        stages,
        warnings: ast.warnings,
    })
}

/// Types the only instruction of `ast` (see `parse_instruction`).
pub(crate) fn single_instruction(ast: Ast) -> Result<Instruction, ParseError> {
    let [node] = ast.children.as_slice() else {
        let message = invalid(format!(
            "expected exactly one instruction, found {}",
            ast.children.len()
        ));
        // Point at the first instruction too many.
        return Err(match ast.children.get(1) {
            Some(extra) => error_at(extra, message),
            None => ParseError::at(message, 0, 0, 0),
        });
    };
    match type_node(node, &node.heredocs).map_err(|kind| error_at(node, kind))? {
        Typed::Instruction(instruction) => Ok(instruction),
        Typed::From(_) => Err(error_at(
            node,
            invalid("FROM starts a stage; it is not allowed here"),
        )),
    }
}

fn type_node(node: &Node, heredocs: &[Heredoc]) -> Result<Typed, ParseErrorKind> {
    let command = node.command();
    let args = &node.args;
    let kind = match command.as_str() {
        "from" => return type_from(node).map(Typed::From),
        "env" => {
            parse_flags("ENV", &node.flags, NO_FLAGS)?;
            InstructionKind::Env(key_values(args, "ENV")?)
        }
        "label" => {
            parse_flags("LABEL", &node.flags, NO_FLAGS)?;
            InstructionKind::Label(key_values(args, "LABEL")?)
        }
        "maintainer" => {
            let value = exactly_one(args, "MAINTAINER")?;
            parse_flags("MAINTAINER", &node.flags, NO_FLAGS)?;
            InstructionKind::Maintainer(value)
        }
        "workdir" => {
            let value = exactly_one(args, "WORKDIR")?;
            parse_flags("WORKDIR", &node.flags, NO_FLAGS)?;
            InstructionKind::Workdir(value)
        }
        "user" => {
            let value = exactly_one(args, "USER")?;
            parse_flags("USER", &node.flags, NO_FLAGS)?;
            InstructionKind::User(value)
        }
        "stopsignal" => {
            let value = exactly_one(args, "STOPSIGNAL")?;
            parse_flags("STOPSIGNAL", &node.flags, NO_FLAGS)?;
            InstructionKind::StopSignal(value)
        }
        "expose" => {
            at_least_one(args, "EXPOSE")?;
            parse_flags("EXPOSE", &node.flags, NO_FLAGS)?;
            InstructionKind::Expose(args.clone())
        }
        "volume" => {
            at_least_one(args, "VOLUME")?;
            parse_flags("VOLUME", &node.flags, NO_FLAGS)?;
            let mut volumes = Vec::with_capacity(args.len());
            for volume in args {
                let volume = volume.trim();
                if volume.is_empty() {
                    return Err(invalid("VOLUME specified can not be an empty string"));
                }
                volumes.push(volume.to_string());
            }
            InstructionKind::Volume(volumes)
        }
        "arg" => InstructionKind::Arg(type_arg(node)?),
        "run" => InstructionKind::Run(type_run(node, heredocs)?),
        "cmd" => {
            parse_flags("CMD", &node.flags, NO_FLAGS)?;
            InstructionKind::Cmd(command_form(node, args))
        }
        "entrypoint" => {
            parse_flags("ENTRYPOINT", &node.flags, NO_FLAGS)?;
            InstructionKind::Entrypoint(command_form(node, args))
        }
        "shell" => {
            parse_flags("SHELL", &node.flags, NO_FLAGS)?;
            if args.is_empty() {
                return Err(invalid("SHELL requires at least one argument"));
            }
            if !node.json {
                return Err(invalid(
                    "SHELL requires the arguments to be in JSON form, e.g. SHELL [\"/bin/sh\", \"-c\"]",
                ));
            }
            InstructionKind::Shell(args.clone())
        }
        "copy" => InstructionKind::Copy(type_copy(node, heredocs, "COPY", COPY_FLAGS)?),
        "add" => InstructionKind::Add(type_copy(node, heredocs, "ADD", ADD_FLAGS)?),
        "healthcheck" => InstructionKind::Healthcheck(type_healthcheck(node)?),
        "onbuild" => InstructionKind::Onbuild(type_onbuild(node, heredocs)?),
        _ => {
            return Err(ParseErrorKind::UnknownInstruction {
                keyword: node.keyword.clone(),
                suggestion: suggest(&node.keyword, INSTRUCTION_NAMES).map(str::to_string),
            });
        }
    };
    Ok(Typed::Instruction(Instruction {
        kind,
        location: node.location,
        original: node.original.trim().to_string(),
    }))
}

fn exactly_one(args: &[String], instruction: &str) -> Result<String, ParseErrorKind> {
    match args {
        [value] => Ok(value.clone()),
        _ => Err(invalid(format!(
            "{instruction} requires exactly one argument"
        ))),
    }
}

fn at_least_one(args: &[String], instruction: &str) -> Result<(), ParseErrorKind> {
    if args.is_empty() {
        return Err(invalid(format!(
            "{instruction} requires at least one argument"
        )));
    }
    Ok(())
}

/// ENV/LABEL triples `key value sep` → pairs.
fn key_values(args: &[String], instruction: &str) -> Result<Vec<KeyValue>, ParseErrorKind> {
    at_least_one(args, instruction)?;
    if args.len() % 3 != 0 {
        return Err(invalid(format!(
            "Bad input to {instruction}, too many arguments"
        )));
    }
    let mut pairs = Vec::with_capacity(args.len() / 3);
    for triple in args.chunks(3) {
        if triple[0].is_empty() {
            return Err(invalid(format!("{instruction} names can not be blank")));
        }
        pairs.push(KeyValue {
            key: triple[0].clone(),
            value: triple[1].clone(),
        });
    }
    Ok(pairs)
}

fn command_form(node: &Node, args: &[String]) -> CommandForm {
    if node.json {
        CommandForm::Exec(args.to_vec())
    } else {
        // Shell form is one argument (or none: `CMD` alone runs an empty shell command).
        CommandForm::Shell(args.join(" "))
    }
}

fn type_from(node: &Node) -> Result<FromInstruction, ParseErrorKind> {
    let args = &node.args;
    let name = match args.as_slice() {
        [_] => None,
        [_, as_word, name] if as_word.eq_ignore_ascii_case("as") => {
            let lower = name.to_lowercase();
            if !valid_stage_name(&lower) {
                return Err(invalid(format!(
                    "invalid name for build stage: {name:?}, name can't start with a number or contain symbols"
                )));
            }
            Some(lower)
        }
        _ => return Err(invalid("FROM requires either one or three arguments")),
    };
    let flags = parse_flags("FROM", &node.flags, FROM_FLAGS)?;
    Ok(FromInstruction {
        image: args[0].clone(),
        name,
        platform: flags.string("platform"),
    })
}

/// `^[a-z][a-z0-9-_.]*$`
fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

fn type_arg(node: &Node) -> Result<ArgInstruction, ParseErrorKind> {
    at_least_one(&node.args, "ARG")?;
    parse_flags("ARG", &node.flags, NO_FLAGS)?;
    let mut decls = Vec::with_capacity(node.args.len());
    for word in &node.args {
        let decl = match word.split_once('=') {
            Some(("", _)) => return Err(invalid("ARG names can not be blank")),
            Some((name, default)) => ArgDecl {
                name: name.to_string(),
                default: Some(default.to_string()),
            },
            None => ArgDecl {
                name: word.clone(),
                default: None,
            },
        };
        decls.push(decl);
    }
    Ok(ArgInstruction {
        args: decls,
        location: node.location,
    })
}

fn type_run(node: &Node, heredocs: &[Heredoc]) -> Result<RunInstruction, ParseErrorKind> {
    let flags = parse_flags("RUN", &node.flags, RUN_FLAGS)?;
    if node.args.is_empty() {
        return Err(invalid("RUN requires at least one argument"));
    }
    Ok(RunInstruction {
        command: command_form(node, &node.args),
        heredocs: heredocs.to_vec(),
        mounts: flags.strings("mount"),
        network: flags.string("network"),
        security: flags.string("security"),
    })
}

fn type_copy(
    node: &Node,
    heredocs: &[Heredoc],
    instruction: &str,
    specs: &[(&'static str, FlagKind)],
) -> Result<CopyInstruction, ParseErrorKind> {
    let args = &node.args;
    let Some((dest, sources)) = args.split_last().filter(|(_, sources)| !sources.is_empty()) else {
        return Err(invalid(format!(
            "{instruction} requires at least two arguments, but only one was provided. \
             Destination could not be determined"
        )));
    };
    let flags: Flags = parse_flags(instruction, &node.flags, specs)?;
    // Only shell-form words can be heredoc references; JSON strings are plain paths.
    if !node.json && matches!(parse_heredoc_word(dest), Ok(Some(_))) {
        return Err(invalid(format!(
            "{instruction} cannot accept a heredoc as a destination"
        )));
    }
    Ok(CopyInstruction {
        sources: sources.to_vec(),
        dest: dest.clone(),
        heredocs: heredocs.to_vec(),
        from: flags.string("from"),
        chown: flags.string("chown"),
        chmod: flags.string("chmod"),
        link: flags.bool("link").unwrap_or(false),
        excludes: flags.strings("exclude"),
        parents: flags.bool("parents").unwrap_or(false),
        checksum: flags.string("checksum"),
        keep_git_dir: flags.bool("keep-git-dir").unwrap_or(false),
        unpack: flags.bool("unpack"),
    })
}

fn type_healthcheck(node: &Node) -> Result<Healthcheck, ParseErrorKind> {
    let args = &node.args;
    let Some((kind, command)) = args.split_first() else {
        return Err(invalid("HEALTHCHECK requires at least one argument"));
    };
    let flags = parse_flags("HEALTHCHECK", &node.flags, HEALTHCHECK_FLAGS)?;
    match kind.to_uppercase().as_str() {
        "NONE" => {
            if !command.is_empty() {
                return Err(invalid("HEALTHCHECK NONE takes no arguments"));
            }
            Ok(Healthcheck::None)
        }
        "CMD" => {
            if command.is_empty() {
                return Err(invalid("Missing command after HEALTHCHECK CMD"));
            }
            let command = command_form(node, command);
            let retries = match flags.string("retries") {
                None => None,
                Some(text) => {
                    let retries: i32 = text.parse().map_err(|_| {
                        invalid(format!(
                            "invalid value for --retries: {text:?} is not a whole number"
                        ))
                    })?;
                    let retries = u32::try_from(retries).map_err(|_| {
                        invalid(format!("--retries cannot be negative ({retries})"))
                    })?;
                    // 0 means "the default", like an absent flag.
                    (retries > 0).then_some(retries)
                }
            };
            Ok(Healthcheck::Cmd {
                command,
                interval: interval(&flags, "interval")?,
                timeout: interval(&flags, "timeout")?,
                start_period: interval(&flags, "start-period")?,
                start_interval: interval(&flags, "start-interval")?,
                retries,
            })
        }
        _ => Err(invalid(format!(
            "Unknown type {kind:?} in HEALTHCHECK (try CMD)"
        ))),
    }
}

/// A HEALTHCHECK duration flag: absent or `0` → `None` (Docker's default); otherwise at least
/// 1ms.
fn interval(flags: &Flags, name: &str) -> Result<Option<Duration>, ParseErrorKind> {
    let Some(text) = flags.string(name) else {
        return Ok(None);
    };
    let nanos = parse_go_duration(&text)
        .map_err(|e| invalid(format!("invalid value for --{name}: {e}")))?;
    if nanos == 0 {
        return Ok(None);
    }
    if nanos < 1_000_000 {
        return Err(invalid(format!(
            "Interval \"{name}\" cannot be less than 1ms (got {text})"
        )));
    }
    let nanos = u64::try_from(nanos)
        .map_err(|_| invalid(format!("invalid value for --{name}: {text} is too large")))?;
    Ok(Some(Duration::from_nanos(nanos)))
}

fn type_onbuild(node: &Node, heredocs: &[Heredoc]) -> Result<OnbuildInstruction, ParseErrorKind> {
    let Some(sub) = node.sub.as_deref() else {
        return Err(invalid("ONBUILD requires at least one argument"));
    };
    parse_flags("ONBUILD", &node.flags, NO_FLAGS)?;
    match sub.keyword.to_uppercase().as_str() {
        "ONBUILD" => {
            return Err(invalid(
                "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
            ));
        }
        trigger @ ("MAINTAINER" | "FROM") => {
            return Err(invalid(format!(
                "{trigger} isn't allowed as an ONBUILD trigger"
            )));
        }
        _ => {}
    }
    let instruction = match type_node(sub, heredocs)? {
        Typed::Instruction(instruction) => instruction,
        Typed::From(_) => return Err(invalid("FROM isn't allowed as an ONBUILD trigger")),
    };
    // Docker stores the trigger as the logical line minus its leading `ONBUILD ` (trailing
    // blanks kept), heredoc bodies appended so that it can be parsed again on its own.
    let go_blank = |c: char| matches!(c, ' ' | '\t' | '\n' | '\u{0C}' | '\r');
    let without_keyword = node
        .original
        .trim_start_matches(go_blank)
        .get(node.keyword.len()..)
        .unwrap_or_default()
        .trim_start_matches(go_blank);
    let mut trigger = without_keyword.to_string();
    for heredoc in heredocs {
        trigger.push('\n');
        trigger.push_str(&heredoc.content);
        trigger.push_str(&heredoc.name);
    }
    Ok(OnbuildInstruction {
        trigger,
        instruction: Box::new(instruction),
    })
}

//! Unit tests of lowering rules, each on a small Dockerfile.

use std::collections::BTreeMap;

use kiln_image::config::ImageConfig;
use kiln_llb::{Chmod, ExecOp, FileAction, MountKind, NetworkMode, Op, OpKind, Platform, SourceOp};

use super::*;

fn amd64() -> Platform {
    Platform {
        os: "linux".to_string(),
        architecture: "amd64".to_string(),
        variant: None,
    }
}

fn options() -> LowerOptions {
    LowerOptions::new(amd64())
}

fn parse(text: &str) -> Dockerfile {
    crate::parser::parse_dockerfile(text, "Dockerfile").unwrap()
}

fn lower_ok(text: &str) -> Lowered {
    lower(&parse(text), &options(), &OfflineResolver).unwrap()
}

fn lower_with(text: &str, options: &LowerOptions) -> Result<Lowered, LowerError> {
    lower(&parse(text), options, &OfflineResolver)
}

fn lower_err(text: &str) -> String {
    lower(&parse(text), &options(), &OfflineResolver)
        .unwrap_err()
        .to_string()
}

/// Resolves images from a fixed table; anything else is "not found".
struct TableResolver(BTreeMap<String, ImageConfig>);

impl ImageResolver for TableResolver {
    fn resolve(
        &self,
        reference: &str,
        _platform: &Platform,
    ) -> Result<ResolvedImage, ResolveError> {
        match self.0.get(reference) {
            Some(config) => Ok(ResolvedImage {
                config: config.clone(),
                digest: Some(format!("sha256:{}", "ab".repeat(32))),
            }),
            None => Err(ResolveError(format!("{reference}: not found").into())),
        }
    }
}

fn execs(lowered: &Lowered) -> Vec<&ExecOp> {
    lowered
        .definition
        .ops()
        .iter()
        .filter_map(|op| match &op.kind {
            OpKind::Exec(exec) => Some(exec),
            _ => None,
        })
        .collect()
}

/// The Source ops of `lowered`, in definition order.
fn sources(lowered: &Lowered) -> Vec<SourceOp> {
    lowered
        .definition
        .ops()
        .iter()
        .filter_map(|op| match &op.kind {
            OpKind::Source(source) => Some(source.clone()),
            _ => None,
        })
        .collect()
}

fn history(lowered: &Lowered) -> Vec<String> {
    lowered
        .target
        .config
        .history
        .iter()
        .map(|entry| entry.created_by.clone())
        .collect()
}

fn op_of(lowered: &Lowered, root: &OpRef) -> Op {
    lowered.definition.get(&root.digest).unwrap().clone()
}

#[test]
fn meta_args_reach_from_but_not_the_stage_unless_redeclared() {
    let lowered =
        lower_ok("ARG TAG=3.20\nARG OTHER=x\nFROM alpine:$TAG\nARG TAG\nRUN echo $TAG $OTHER\n");
    let image = lowered
        .definition
        .ops()
        .iter()
        .find_map(|op| match &op.kind {
            OpKind::Source(SourceOp::Image { reference, .. }) => Some(reference.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(image, "docker.io/library/alpine:3.20");
    let exec = execs(&lowered)[0];
    assert!(exec.env.contains(&"TAG=3.20".to_string()));
    assert!(!exec.env.iter().any(|e| e.starts_with("OTHER=")));
    assert_eq!(
        history(&lowered),
        vec![
            "ARG TAG=3.20".to_string(),
            "RUN |1 TAG=3.20 /bin/sh -c echo $TAG $OTHER # buildkit".to_string()
        ]
    );
}

#[test]
fn build_args_override_defaults_and_env_wins_over_arg() {
    let mut options = options();
    options
        .build_args
        .insert("A".to_string(), "from-cli".to_string());
    options
        .build_args
        .insert("B".to_string(), "cli-b".to_string());
    let lowered = lower_with(
        "FROM scratch\nARG A=default\nARG B=bdefault\nENV B=env-b\nRUN x\n",
        &options,
    )
    .unwrap();
    let exec = execs(&lowered)[0];
    assert!(exec.env.contains(&"A=from-cli".to_string()));
    assert!(exec.env.contains(&"B=env-b".to_string()));
    assert_eq!(lowered.target.config.config.env_get("B"), Some("env-b"));
    // ARGs are not part of the image config.
    assert_eq!(lowered.target.config.config.env_get("A"), None);
    assert!(
        history(&lowered)
            .contains(&"RUN |2 A=from-cli B=env-b /bin/sh -c x # buildkit".to_string())
    );
}

#[test]
fn platform_args_exist_in_from_and_in_stages_that_declare_them() {
    let mut options = options();
    options.target_platform = Some(Platform {
        os: "linux".to_string(),
        architecture: "arm64".to_string(),
        variant: None,
    });
    let lowered = lower_with(
        "FROM --platform=$BUILDPLATFORM busybox AS build\nARG TARGETARCH\nRUN echo $TARGETARCH $BUILDOS\nFROM scratch\nCOPY --from=build /x /x\n",
        &options,
    )
    .unwrap();
    let exec = execs(&lowered)[0];
    assert!(exec.env.contains(&"TARGETARCH=arm64".to_string()));
    assert!(!exec.env.iter().any(|e| e.starts_with("BUILDOS=")));
    let build = lowered.stages.iter().find(|s| s.index == 0).unwrap();
    assert_eq!(build.platform, amd64());
    assert_eq!(lowered.target.platform.architecture, "arm64");
    assert_eq!(lowered.target.config.architecture, "arm64");
}

#[test]
fn proxy_args_go_to_run_without_declaration_or_history() {
    let mut options = options();
    options
        .build_args
        .insert("http_proxy".to_string(), "http://proxy:3128".to_string());
    let lowered = lower_with("FROM scratch\nRUN make\n", &options).unwrap();
    let exec = execs(&lowered)[0];
    assert!(
        exec.proxy_env
            .contains(&"HTTP_PROXY=http://proxy:3128".to_string())
    );
    assert!(
        exec.proxy_env
            .contains(&"http_proxy=http://proxy:3128".to_string())
    );
    assert!(
        !exec
            .env
            .iter()
            .any(|e| e.to_lowercase().starts_with("http_proxy"))
    );
    assert_eq!(history(&lowered), vec!["RUN /bin/sh -c make # buildkit"]);
    assert!(lowered.warnings.is_empty(), "{:?}", lowered.warnings);
}

#[test]
fn unconsumed_build_args_are_reported() {
    let mut options = options();
    options
        .build_args
        .insert("UNUSED".to_string(), "1".to_string());
    options
        .build_args
        .insert("USED".to_string(), "1".to_string());
    let lowered = lower_with("FROM scratch\nARG USED\n", &options).unwrap();
    assert_eq!(lowered.warnings.len(), 1);
    assert_eq!(
        lowered.warnings[0].message,
        "One or more build-args [UNUSED] were not consumed"
    );
}

#[test]
fn empty_build_arg_name_is_an_error() {
    let mut options = options();
    options.build_args.insert(String::new(), "x".to_string());
    let error = lower_with("FROM scratch\n", &options).unwrap_err();
    assert!(
        error.to_string().contains("empty build arg name"),
        "{error}"
    );
}

#[test]
fn shell_form_uses_the_shell_in_effect() {
    let lowered = lower_ok(
        "FROM scratch\nSHELL [\"/bin/bash\", \"-eo\", \"pipefail\", \"-c\"]\nRUN make all\nCMD run me\n",
    );
    assert_eq!(
        execs(&lowered)[0].args,
        vec!["/bin/bash", "-eo", "pipefail", "-c", "make all"]
    );
    assert_eq!(
        lowered.target.config.config.cmd,
        Some(vec![
            "/bin/bash".to_string(),
            "-eo".to_string(),
            "pipefail".to_string(),
            "-c".to_string(),
            "run me".to_string()
        ])
    );
    assert!(lowered.target.config.config.args_escaped);
    assert_eq!(history(&lowered)[0], "SHELL [/bin/bash -eo pipefail -c]");
    assert_eq!(
        history(&lowered)[2],
        r#"CMD ["/bin/bash" "-eo" "pipefail" "-c" "run me"]"#
    );
}

#[test]
fn entrypoint_resets_an_inherited_cmd_but_not_one_set_in_the_stage() {
    let mut base = ImageConfig::empty("linux", "amd64", None);
    base.config.cmd = Some(vec!["sh".to_string()]);
    let resolver = TableResolver(BTreeMap::from([(
        "docker.io/library/busybox:latest".to_string(),
        base,
    )]));
    let reset = lower(
        &parse("FROM busybox\nENTRYPOINT [\"/app\"]\n"),
        &options(),
        &resolver,
    )
    .unwrap();
    assert_eq!(reset.target.config.config.cmd, None);
    let kept = lower(
        &parse("FROM busybox\nCMD [\"serve\"]\nENTRYPOINT [\"/app\"]\n"),
        &options(),
        &resolver,
    )
    .unwrap();
    assert_eq!(
        kept.target.config.config.cmd,
        Some(vec!["serve".to_string()])
    );
    // A stage built FROM another inherits its CMD as "not set here".
    let from_stage = lower(
        &parse("FROM busybox AS a\nCMD [\"serve\"]\nFROM a\nENTRYPOINT [\"/app\"]\n"),
        &options(),
        &resolver,
    )
    .unwrap();
    assert_eq!(from_stage.target.config.config.cmd, None);
}

#[test]
fn workdirs_chain_and_make_one_mkdir_layer_each() {
    let lowered =
        lower_ok("FROM scratch\nWORKDIR /app\nWORKDIR src\nWORKDIR ../lib\nWORKDIR /\nRUN pwd\n");
    assert_eq!(
        history(&lowered)[..4],
        [
            "WORKDIR /app",
            "WORKDIR /app/src",
            "WORKDIR /app/lib",
            "WORKDIR /"
        ]
    );
    let layers: Vec<bool> = lowered
        .target
        .config
        .history
        .iter()
        .map(|h| h.empty_layer)
        .collect();
    assert_eq!(layers, vec![false, false, false, true, false]);
    let mkdirs: Vec<String> = lowered
        .definition
        .ops()
        .iter()
        .filter_map(|op| match &op.kind {
            OpKind::File(file) => match &file.actions[0] {
                FileAction::Mkdir(mkdir) => Some(mkdir.path.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(mkdirs, vec!["/app", "/app/src", "/app/lib"]);
    assert_eq!(execs(&lowered)[0].cwd, "/");
    assert_eq!(lowered.target.config.config.working_dir, "/");
}

#[test]
fn user_env_and_workdir_feed_later_runs() {
    let lowered = lower_ok("FROM scratch\nUSER app\nENV A=1 B=\"two words\"\nWORKDIR /w\nRUN id\n");
    let exec = execs(&lowered)[0];
    assert_eq!(exec.user, "app");
    assert_eq!(exec.cwd, "/w");
    assert!(exec.env.contains(&"B=two words".to_string()));
    // The WORKDIR's directory is owned by the user in effect.
    let workdir_op = lowered
        .definition
        .ops()
        .iter()
        .find_map(|op| match &op.kind {
            OpKind::File(file) => Some(file.clone()),
            _ => None,
        })
        .unwrap();
    match &workdir_op.actions[0] {
        FileAction::Mkdir(mkdir) => assert!(mkdir.owner.is_some()),
        other => panic!("expected mkdir, got {other:?}"),
    }
    assert_eq!(history(&lowered)[1], "ENV A=1 B=two words");
}

#[test]
fn env_pairs_expand_against_the_previous_environment() {
    let lowered = lower_ok("FROM scratch\nENV A=old\nENV A=new B=$A\n");
    assert_eq!(lowered.target.config.config.env_get("B"), Some("old"));
}

#[test]
fn variables_expand_in_metadata_instructions_but_not_cmd() {
    let lowered = lower_ok(
        "FROM scratch\nENV P=8080 U=nobody S=SIGTERM V=/data L=lbl\nEXPOSE $P\nUSER $U\nSTOPSIGNAL $S\nVOLUME $V\nLABEL $L=$P\nCMD echo $P\n",
    );
    let config = &lowered.target.config.config;
    assert!(config.exposed_ports.contains_key("8080/tcp"));
    assert_eq!(config.user, "nobody");
    assert_eq!(config.stop_signal, "SIGTERM");
    assert!(config.volumes.contains_key("/data"));
    assert_eq!(config.labels.get("lbl").map(String::as_str), Some("8080"));
    assert_eq!(config.cmd.as_ref().unwrap()[2], "echo $P");
}

#[test]
fn copy_from_names_a_stage_by_name_or_index_or_an_image() {
    let lowered = lower_ok(
        "FROM scratch AS first\nRUN build\nFROM scratch\nCOPY --from=first /a /a\nCOPY --from=0 /b /b\nCOPY --from=nginx:1.27 /etc/nginx /etc/nginx\n",
    );
    let first_root = lowered
        .stages
        .iter()
        .find(|s| s.index == 0)
        .unwrap()
        .root
        .clone();
    let copies: Vec<Op> = lowered
        .definition
        .ops()
        .iter()
        .filter(
            |op| matches!(&op.kind, OpKind::File(f) if matches!(f.actions[0], FileAction::Copy(_))),
        )
        .cloned()
        .collect();
    assert_eq!(copies.len(), 3);
    assert_eq!(copies[0].inputs[1], first_root);
    assert_eq!(copies[1].inputs[1], first_root);
    let image_input = lowered.definition.get(&copies[2].inputs[1].digest).unwrap();
    assert!(matches!(
        &image_input.kind,
        OpKind::Source(SourceOp::Image { reference, .. }) if reference == "docker.io/library/nginx:1.27"
    ));
}

#[test]
fn stage_reference_errors_name_the_line() {
    let forward =
        lower_err("FROM scratch AS a\nCOPY --from=later /a /a\nFROM scratch AS later\nFROM a\n");
    assert!(
        forward.contains("Dockerfile:2: cannot copy from stage \"later\""),
        "{forward}"
    );
    let index = lower_err("FROM scratch\nCOPY --from=5 /a /a\n");
    assert!(
        index.contains("Dockerfile:2: invalid stage index 5"),
        "{index}"
    );
    let variable = lower_err("FROM scratch\nARG S=x\nCOPY --from=$S /a /a\n");
    assert!(
        variable.contains("variable expansion is not supported for --from"),
        "{variable}"
    );
}

#[test]
fn circular_stage_references_are_reported() {
    let error = lower_err("FROM scratch AS a\nCOPY --from=b /x /x\nFROM a AS b\n");
    assert!(
        error.contains("circular dependency detected on stage: a"),
        "{error}"
    );
    assert!(error.contains("a -> b -> a"), "{error}");
}

#[test]
fn target_selects_the_stage_and_unneeded_stages_make_no_ops() {
    let text =
        "FROM scratch AS a\nRUN only-a\nFROM scratch AS b\nRUN only-b\nFROM scratch\nRUN last\n";
    let mut options = options();
    options.target = Some("A".to_string());
    let lowered = lower_with(text, &options).unwrap();
    assert_eq!(lowered.target.name.as_deref(), Some("a"));
    assert_eq!(lowered.stages.len(), 1);
    let args: Vec<String> = execs(&lowered).iter().map(|e| e.args[2].clone()).collect();
    assert_eq!(args, vec!["only-a"]);
    options.target = Some("missing".to_string());
    let error = lower_with(text, &options).unwrap_err().to_string();
    assert!(
        error.contains("target stage \"missing\" could not be found"),
        "{error}"
    );
}

#[test]
fn equal_ops_in_different_stages_are_one_node() {
    let lowered = lower_ok(
        "FROM alpine AS a\nRUN apk add make\nFROM alpine AS b\nRUN apk add make\nFROM scratch\nCOPY --from=a /x /x\nCOPY --from=b /y /y\n",
    );
    assert_eq!(execs(&lowered).len(), 1);
    let a = &lowered.stages[0];
    let b = &lowered.stages[1];
    assert_eq!(a.root, b.root);
}

#[test]
fn from_another_stage_continues_its_result_and_config() {
    let lowered = lower_ok(
        "FROM scratch AS base\nENV A=1\nWORKDIR /srv\nUSER app\nARG V=7\nFROM base\nRUN go\n",
    );
    let base = &lowered.stages[0];
    let exec = execs(&lowered)[0];
    assert_eq!(exec.cwd, "/srv");
    assert_eq!(exec.user, "app");
    assert!(exec.env.contains(&"A=1".to_string()));
    assert!(exec.env.contains(&"V=7".to_string()));
    assert_eq!(op_of(&lowered, &lowered.target.root).inputs[0], base.root);
    assert_eq!(lowered.target.base_history_len, base.config.history.len());
    assert_eq!(
        history(&lowered).last().unwrap(),
        "RUN |1 V=7 /bin/sh -c go # buildkit"
    );
}

#[test]
fn options_labels_go_to_the_target_only() {
    let mut options = options();
    options
        .labels
        .insert("built.by".to_string(), "kiln".to_string());
    let lowered = lower_with("FROM scratch AS a\nFROM a\nLABEL x=1\n", &options).unwrap();
    assert_eq!(lowered.target.config.config.labels.len(), 2);
    assert!(lowered.stages[0].config.config.labels.is_empty());
}

#[test]
fn onbuild_triggers_of_the_base_run_right_after_from() {
    let mut base = ImageConfig::empty("linux", "amd64", None);
    base.config.on_build = vec!["RUN echo triggered".to_string(), "ENV T=1".to_string()];
    let resolver = TableResolver(BTreeMap::from([(
        "docker.io/library/onbuild-base:latest".to_string(),
        base,
    )]));
    let lowered = lower(
        &parse("FROM onbuild-base\nRUN echo mine\n"),
        &options(),
        &resolver,
    )
    .unwrap();
    let args: Vec<String> = execs(&lowered).iter().map(|e| e.args[2].clone()).collect();
    assert_eq!(args, vec!["echo triggered", "echo mine"]);
    assert!(execs(&lowered)[1].env.contains(&"T=1".to_string()));
    assert!(lowered.target.config.config.on_build.is_empty());
    let description = lowered
        .definition
        .metadata(&execs_digest(&lowered, 0))
        .unwrap()
        .description
        .clone()
        .unwrap();
    assert_eq!(description, "[2/3] ONBUILD RUN echo triggered");
    // The image source is pinned to the digest the resolver returned.
    assert!(lowered.definition.ops().iter().any(|op| matches!(
        &op.kind,
        OpKind::Source(SourceOp::Image { reference, .. }) if reference.contains("@sha256:abab")
    )));
}

fn execs_digest(lowered: &Lowered, n: usize) -> kiln_llb::OpDigest {
    lowered
        .definition
        .iter()
        .filter(|(_, op, _)| matches!(op.kind, OpKind::Exec(_)))
        .nth(n)
        .map(|(digest, _, _)| digest.clone())
        .unwrap()
}

#[test]
fn onbuild_instructions_are_recorded_not_run() {
    let lowered = lower_ok("FROM scratch\nONBUILD RUN make\n");
    assert_eq!(lowered.target.config.config.on_build, vec!["RUN make"]);
    assert!(execs(&lowered).is_empty());
    assert!(history(&lowered).is_empty());
}

#[test]
fn unresolvable_base_image_is_an_error_with_its_line() {
    let resolver = TableResolver(BTreeMap::new());
    let error = lower(
        &parse("FROM scratch\n\nFROM nothere:1\n"),
        &options(),
        &resolver,
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.starts_with("Dockerfile:3: failed to resolve image docker.io/library/nothere:1"),
        "{error}"
    );
}

#[test]
fn run_heredoc_with_shebang_runs_a_file() {
    let lowered = lower_ok("FROM scratch\nRUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\n");
    let exec = execs(&lowered)[0];
    assert_eq!(exec.args, vec!["/bin/sh", "-c", "/dev/pipes/EOF"]);
    let pipe = exec
        .mounts
        .iter()
        .find(|m| m.target == "/dev/pipes/")
        .unwrap();
    assert!(pipe.readonly);
    let document = lowered
        .definition
        .get(&op_of(&lowered, &lowered.target.root).inputs[1].digest)
        .unwrap();
    match &document.kind {
        OpKind::File(file) => match &file.actions[0] {
            FileAction::Mkfile(mkfile) => {
                assert_eq!(mkfile.path, "/EOF");
                assert_eq!(mkfile.mode, 0o755);
                assert_eq!(mkfile.data, "#!/usr/bin/env python3\nprint(1)\n");
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[test]
fn run_heredoc_without_shebang_goes_to_the_shell() {
    let lowered = lower_ok("FROM scratch\nRUN <<EOF\napk add curl\necho done\nEOF\n");
    assert_eq!(
        execs(&lowered)[0].args,
        vec!["/bin/sh", "-c", "apk add curl\necho done\n"]
    );
    let around = lower_ok("FROM scratch\nRUN python3 <<EOF\nprint(1)\nEOF\n");
    assert_eq!(
        execs(&around)[0].args,
        vec!["/bin/sh", "-c", "python3 <<EOF\nprint(1)\nEOF"]
    );
}

#[test]
fn copy_heredoc_becomes_a_mkfile() {
    let lowered = lower_ok("FROM scratch\nENV NAME=kiln\nCOPY <<EOF /etc/motd\nhello $NAME\nEOF\n");
    let mkfile = lowered
        .definition
        .ops()
        .iter()
        .find_map(|op| match &op.kind {
            OpKind::File(file) => match &file.actions[0] {
                FileAction::Mkfile(mkfile) => Some(mkfile.clone()),
                _ => None,
            },
            _ => None,
        })
        .unwrap();
    assert_eq!(mkfile.data, "hello kiln\n");
    assert_eq!(history(&lowered)[1], "COPY <<EOF /etc/motd # buildkit");
}

#[test]
fn add_urls_git_and_local_archives() {
    let lowered = lower_ok(
        "FROM scratch\nADD --checksum=sha256:0000000000000000000000000000000000000000000000000000000000000000 https://example.com/dl/tool.tar.gz /opt/\nADD https://github.com/moby/buildkit.git#v0.13.0:docs /docs\nADD app.tar.gz /app/\n",
    );
    let sources = sources(&lowered);
    assert!(sources.iter().any(|s| matches!(s, SourceOp::Http { url, checksum: Some(_), filename: Some(f) } if url.ends_with("tool.tar.gz") && f == "tool.tar.gz")));
    assert!(sources.iter().any(|s| matches!(s, SourceOp::Git { url, reference: Some(r), subdir: Some(d), .. } if url == "https://github.com/moby/buildkit.git" && r == "v0.13.0" && d == "docs")));
    let copies: Vec<kiln_llb::CopyAction> = lowered
        .definition
        .ops()
        .iter()
        .filter_map(|op| match &op.kind {
            OpKind::File(file) => match &file.actions[0] {
                FileAction::Copy(copy) => Some(copy.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert!(
        !copies[0].attempt_unpack,
        "remote archives are not unpacked"
    );
    assert!(copies[2].attempt_unpack, "local archives are unpacked");
    let copy_url = lower_err("FROM scratch\nCOPY https://example.com/x /x\n");
    assert!(
        copy_url.contains("source can't be a URL for COPY"),
        "{copy_url}"
    );
}

#[test]
fn copy_link_becomes_a_merge() {
    let lowered = lower_ok("FROM alpine\nCOPY --link src /app/\n");
    let root = op_of(&lowered, &lowered.target.root);
    assert!(matches!(root.kind, OpKind::Merge(_)));
    assert_eq!(root.inputs.len(), 2);
    let layer = lowered.definition.get(&root.inputs[1].digest).unwrap();
    match &layer.kind {
        OpKind::File(file) => assert_eq!(file.base, None),
        other => panic!("{other:?}"),
    }
    assert_eq!(history(&lowered), vec!["COPY src /app/ # buildkit"]);
}

#[test]
fn copy_flags_and_paths() {
    let lowered = lower_ok(
        "FROM scratch\nWORKDIR /app\nCOPY --chown=app:staff --chmod=0640 --exclude=*.md a b ./\n",
    );
    let root = op_of(&lowered, &lowered.target.root);
    let OpKind::File(file) = &root.kind else {
        panic!()
    };
    let FileAction::Copy(copy) = &file.actions[1] else {
        panic!()
    };
    assert_eq!(copy.src_path, "/b");
    assert_eq!(copy.dest, "/app/");
    assert_eq!(copy.chmod, Some(Chmod::Octal(0o640)));
    assert_eq!(copy.exclude_patterns, vec!["*.md"]);
    assert_eq!(
        history(&lowered)[1],
        "COPY --chown=app:staff --chmod=0640 a b ./ # buildkit"
    );
    let bad = lower_err("FROM scratch\n\nCOPY --chmod=9z9 a /b\n");
    assert!(
        bad.starts_with("Dockerfile:3: invalid chmod parameter"),
        "{bad}"
    );
}

#[test]
fn run_flags_and_mounts() {
    let lowered = lower_ok(
        "FROM scratch AS deps\nFROM scratch\nWORKDIR /src\nARG CACHE=gomod\nRUN --network=none --security=insecure --mount=type=cache,id=$CACHE,target=/go/pkg/mod,sharing=locked --mount=type=secret,id=token,env=TOKEN --mount=type=ssh --mount=from=deps,source=/out,target=deps --mount=type=tmpfs,target=/tmp,size=1m make\n",
    );
    let exec = execs(&lowered)[0];
    assert_eq!(exec.network, NetworkMode::None);
    assert_eq!(exec.security, kiln_llb::SecurityMode::Insecure);
    let cache = exec
        .mounts
        .iter()
        .find(|m| m.target == "/go/pkg/mod")
        .unwrap();
    assert!(
        matches!(&cache.kind, MountKind::Cache { id, sharing: kiln_llb::CacheSharing::Locked, .. } if id == "gomod")
    );
    assert_eq!(exec.secret_env[0].name, "TOKEN");
    assert!(
        exec.mounts
            .iter()
            .any(|m| m.target == "/run/buildkit/ssh_agent.0")
    );
    let bind = exec
        .mounts
        .iter()
        .find(|m| m.target == "/src/deps")
        .unwrap();
    assert_eq!(bind.selector.as_deref(), Some("/out"));
    assert!(bind.readonly);
    assert!(exec.mounts.iter().any(|m| matches!(
        m.kind,
        MountKind::Tmpfs {
            size: Some(1048576)
        }
    )));
    let bad = lower_err("FROM scratch\nRUN --mount=type=cache make\n");
    assert!(bad.contains("Dockerfile:2: invalid RUN --mount"), "{bad}");
    let network = lower_err("FROM scratch\nRUN --network=bridge make\n");
    assert!(network.contains("invalid RUN --network"), "{network}");
}

#[test]
fn metadata_history_formats() {
    let lowered = lower_ok(concat!(
        "FROM scratch\n",
        "MAINTAINER someone <a@b.c>\n",
        "LABEL a=1 \"b c\"=\"d e\"\n",
        "EXPOSE 80 53/udp\n",
        "VOLUME [\"/a\", \"/b\"]\n",
        "STOPSIGNAL SIGQUIT\n",
        "HEALTHCHECK NONE\n",
        "ARG X Y=2\n",
        "ENTRYPOINT [\"/bin/app\", \"--flag\"]\n",
    ));
    assert_eq!(
        history(&lowered),
        vec![
            "MAINTAINER someone <a@b.c>",
            "LABEL a=1 b c=d e",
            "EXPOSE [80/tcp 53/udp]",
            "VOLUME [/a /b]",
            "STOPSIGNAL SIGQUIT",
            "HEALTHCHECK {Test:[NONE] Interval:0s Timeout:0s StartPeriod:0s StartInterval:0s Retries:0}",
            "ARG X Y=2",
            r#"ENTRYPOINT ["/bin/app" "--flag"]"#,
        ]
    );
    assert!(lowered.target.config.history.iter().all(|h| h.empty_layer));
    assert_eq!(lowered.target.config.author, "someone <a@b.c>");
    let bad_signal = lower_err("FROM scratch\nSTOPSIGNAL SIGNOPE\n");
    assert!(bad_signal.contains("invalid STOPSIGNAL"), "{bad_signal}");
    let bad_port = lower_err("FROM scratch\nEXPOSE 80/icmp\n");
    assert!(
        bad_port.contains("Dockerfile:2: invalid EXPOSE value"),
        "{bad_port}"
    );
}

#[test]
fn scratch_config_has_path_and_root_workdir() {
    let lowered = lower_ok("FROM scratch\n");
    let config = &lowered.target.config;
    assert_eq!(config.config.working_dir, "/");
    assert_eq!(
        config.config.env,
        vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    );
    assert_eq!(
        (config.os.as_str(), config.architecture.as_str()),
        ("linux", "amd64")
    );
}

#[test]
fn base_image_config_drops_unknown_fields_and_layers_but_keeps_history() {
    let base = ImageConfig::from_json(
        br#"{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Hostname":"x"},"rootfs":{"type":"layers","diff_ids":["sha256:1111111111111111111111111111111111111111111111111111111111111111"]},"history":[{"created_by":"ADD rootfs"}],"container_config":{},"created":"2020-01-01T00:00:00Z"}"#,
    )
    .unwrap();
    let resolver = TableResolver(BTreeMap::from([(
        "docker.io/library/base:latest".to_string(),
        base,
    )]));
    let lowered = lower(&parse("FROM base\nRUN true\n"), &options(), &resolver).unwrap();
    let config = &lowered.target.config;
    assert!(config.extra.is_empty());
    assert!(config.config.extra.is_empty());
    assert!(config.rootfs.diff_ids.is_empty());
    assert_eq!(config.created, None);
    assert_eq!(lowered.target.base_history_len, 1);
    assert_eq!(config.history.len(), 2);
    assert_eq!(execs(&lowered)[0].env, vec!["PATH=/bin"]);
}

#[test]
fn descriptions_number_the_steps_per_stage() {
    let lowered = lower_ok("FROM alpine AS build\nRUN a\nFROM scratch\nCOPY --from=build /x /x\n");
    let descriptions: Vec<String> = lowered
        .definition
        .iter()
        .filter_map(|(_, _, meta)| meta.and_then(|m| m.description.clone()))
        .collect();
    assert!(descriptions.contains(&"[build 1/2] FROM docker.io/library/alpine:latest".to_string()));
    assert!(descriptions.contains(&"[build 2/2] RUN a".to_string()));
    assert!(descriptions.contains(&"[stage-1 1/1] COPY --from=build /x /x".to_string()));
    let single = lower_ok("FROM scratch\nRUN a\n");
    let description = single
        .definition
        .metadata(&single.target.root.digest)
        .unwrap()
        .description
        .clone();
    assert_eq!(description.as_deref(), Some("[1/1] RUN a"));
}

#[test]
fn no_cache_marks_ops() {
    let mut options = options();
    options.no_cache_filter = vec!["build".to_string()];
    let lowered = lower_with(
        "FROM scratch AS build\nRUN a\nFROM build\nRUN b\n",
        &options,
    )
    .unwrap();
    let marks: Vec<bool> = lowered
        .definition
        .iter()
        .filter(|(_, op, _)| matches!(op.kind, OpKind::Exec(_)))
        .map(|(_, _, meta)| meta.is_some_and(|m| m.ignore_cache))
        .collect();
    assert_eq!(marks, vec![true, false]);
}

#[test]
fn empty_base_name_and_bad_platform_are_errors() {
    let empty = lower_err("ARG IMG\nFROM $IMG\n");
    assert!(
        empty.contains("Dockerfile:2: base name ($IMG) should not be blank"),
        "{empty}"
    );
    let platform = lower_err("FROM --platform=linux//x scratch\n");
    assert!(platform.contains("invalid platform"), "{platform}");
}

#[test]
fn text_form_has_ops_and_configs() {
    let lowered = lower_ok("FROM alpine\nRUN make\n");
    let text = lowered.to_text();
    assert!(text.contains("source image docker.io/library/alpine:latest platform=linux/amd64"));
    assert!(text.contains("exec [\"/bin/sh\", \"-c\", \"make\"]"));
    assert!(text.contains("(target)"));
    assert!(text.contains("\"created_by\": \"RUN /bin/sh -c make # buildkit\""));
}

#[test]
fn git_sources_in_fragment_and_query_form() {
    let lowered = lower_ok(
        "FROM scratch\nADD https://github.com/go-delve/delve.git?ref=v1.22.0&keep-git-dir=1 /src\nADD git@github.com:moby/moby.git#main:docs /docs\n",
    );
    let gits: Vec<SourceOp> = lowered
        .definition
        .ops()
        .iter()
        .filter_map(|op| match &op.kind {
            OpKind::Source(source @ SourceOp::Git { .. }) => Some(source.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        gits,
        vec![
            SourceOp::Git {
                url: "https://github.com/go-delve/delve.git".to_string(),
                reference: Some("v1.22.0".to_string()),
                subdir: None,
                keep_git_dir: true,
            },
            SourceOp::Git {
                url: "git@github.com:moby/moby.git".to_string(),
                reference: Some("main".to_string()),
                subdir: Some("docs".to_string()),
                keep_git_dir: false,
            },
        ]
    );
}

#[test]
fn mount_without_target_lands_in_the_workdir() {
    let lowered =
        lower_ok("FROM scratch AS bin\nFROM scratch\nWORKDIR /work\nRUN --mount=from=bin ls\n");
    let exec = execs(&lowered)[0];
    let bind = exec.mounts.iter().find(|m| m.target == "/work").unwrap();
    assert!(bind.readonly);
    assert_eq!(bind.selector, None);
}

#[test]
fn host_options_use_the_host_platform() {
    let options = LowerOptions::for_host();
    assert_eq!(
        options.build_platform,
        llb_platform(&kiln_image::Platform::host())
    );
    assert_eq!(options.context_name, "context");
    assert_eq!(options.target_platform, None);
}

#[test]
fn named_contexts_stand_in_for_images_and_stages() {
    let mut options = options();
    options.named_contexts.insert(
        "alpine".to_string(),
        NamedContext::Image("alpine:3.19".to_string()),
    );
    options
        .named_contexts
        .insert("deps".to_string(), NamedContext::Local);
    let lowered = lower_with(
        "FROM scratch AS deps\nRUN never\nFROM alpine\nCOPY --from=deps /x /x\n",
        &options,
    )
    .unwrap();
    assert!(
        execs(&lowered).is_empty(),
        "the replaced stage runs nothing"
    );
    let sources = sources(&lowered);
    assert!(sources.iter().any(|s| matches!(s, SourceOp::Image { reference, .. } if reference == "docker.io/library/alpine:3.19")));
    assert!(
        sources
            .iter()
            .any(|s| matches!(s, SourceOp::Local { name, .. } if name == "deps"))
    );
}

#[test]
fn named_contexts_match_familiar_names() {
    let mut options = options();
    options.named_contexts.insert(
        "alpine".to_string(),
        NamedContext::Image("busybox:1.36".to_string()),
    );
    options
        .named_contexts
        .insert("example.com/tools".to_string(), NamedContext::Local);
    let lowered = lower_with(
        "FROM docker.io/library/alpine:latest\nCOPY --from=example.com/tools:latest /t /t\n",
        &options,
    )
    .unwrap();
    let sources = sources(&lowered);
    assert!(sources.iter().any(|s| matches!(s, SourceOp::Image { reference, .. } if reference == "docker.io/library/busybox:1.36")), "{sources:?}");
    assert!(
        sources
            .iter()
            .any(|s| matches!(s, SourceOp::Local { name, .. } if name == "example.com/tools")),
        "{sources:?}"
    );
    // A tag other than latest is a different name.
    let lowered = lower_with("FROM alpine:3.19\n", &options).unwrap();
    assert_eq!(
        lowered.target.base_image.as_deref(),
        Some("docker.io/library/alpine:3.19")
    );
}

#[test]
fn a_named_scratch_image_is_the_empty_filesystem() {
    let mut options = options();
    options.named_contexts.insert(
        "base".to_string(),
        NamedContext::Image("scratch".to_string()),
    );
    let lowered = lower_with("FROM base\nCOPY --from=base / /x/\n", &options).unwrap();
    let images = lowered
        .definition
        .ops()
        .iter()
        .filter(|op| matches!(&op.kind, OpKind::Source(SourceOp::Image { .. })))
        .count();
    assert_eq!(images, 0, "no image is resolved for docker-image://scratch");
    assert_eq!(lowered.target.base_image, None);
}

#[test]
fn source_date_epoch_dates_new_history_entries() {
    let mut options = options();
    options
        .build_args
        .insert("SOURCE_DATE_EPOCH".to_string(), "1700000000".to_string());
    let lowered = lower_with("FROM scratch\nENV A=1\n", &options).unwrap();
    assert_eq!(
        lowered.target.config.history[0].created.as_deref(),
        Some("2023-11-14T22:13:20Z")
    );
    assert!(lowered.warnings.is_empty());
    options
        .build_args
        .insert("SOURCE_DATE_EPOCH".to_string(), "yesterday".to_string());
    let error = lower_with("FROM scratch\n", &options)
        .unwrap_err()
        .to_string();
    assert!(error.contains("invalid SOURCE_DATE_EPOCH"), "{error}");
}

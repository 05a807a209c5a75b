//! The op vocabulary of kiln builds: a `Definition` is a list of ops (Source, Exec, File, Merge) in
//! dependency order; each op names its inputs by `(op digest, output index)`. The op digest is the
//! sha256 of the op's canonical encoding, so equal ops are one node.
//!
//! - [`op`]: the op types. An op lists its inputs once and refers to them by position.
//! - [`digest`]: [`OpDigest`] and the canonical encoding it hashes.
//! - [`definition`]: [`Definition`] (ordered, deduplicated, validated) and [`DefinitionBuilder`];
//!   per-op [`OpMetadata`] (descriptions, Dockerfile locations, "ignore cache") sits beside the ops
//!   and never changes a digest.
//! - `print`: the `Display` text form used by `kiln debug llb`.
//!
//! Secrets are referred to by id only; no secret value ever enters a definition.

pub mod definition;
pub mod digest;
pub mod op;
mod print;

pub use definition::{Definition, DefinitionBuilder, DefinitionError, OpMetadata, SourceLocation};
pub use digest::{OpDigest, OpDigestParseError, canonical_encoding};
pub use op::{
    CacheSharing, Chmod, Chown, CopyAction, ExecOp, FileAction, FileOp, InputIndex, MergeOp,
    MkdirAction, MkfileAction, Mount, MountKind, NetworkMode, Op, OpKind, OpRef, Platform,
    RmAction, SecretEnv, SecurityMode, SourceOp, UserSpec,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn alpine() -> Op {
        Op::source(SourceOp::Image {
            reference: "docker.io/library/alpine:3.20".to_string(),
            platform: Some(Platform {
                os: "linux".to_string(),
                architecture: "amd64".to_string(),
                variant: None,
            }),
        })
    }

    fn run(base: OpRef, args: &[&str]) -> Op {
        Op {
            inputs: vec![base],
            kind: OpKind::Exec(ExecOp {
                args: args.iter().map(|arg| arg.to_string()).collect(),
                env: vec!["PATH=/usr/bin:/bin".to_string()],
                cwd: "/".to_string(),
                user: String::new(),
                network: NetworkMode::Sandbox,
                security: SecurityMode::Sandbox,
                mounts: vec![Mount {
                    target: "/".to_string(),
                    input: Some(0),
                    selector: None,
                    readonly: false,
                    output: Some(0),
                    kind: MountKind::Bind,
                }],
                secret_env: Vec::new(),
                proxy_env: Vec::new(),
            }),
        }
    }

    fn described(text: &str) -> OpMetadata {
        OpMetadata {
            description: Some(text.to_string()),
            ..OpMetadata::default()
        }
    }

    #[test]
    fn digests_are_stable_golden_values() {
        // These pin the canonical encoding: a change here changes every cache key, so it must be
        // deliberate.
        assert_eq!(
            String::from_utf8(canonical_encoding(&Op::source(SourceOp::Scratch))).unwrap(),
            r#"{"inputs":[],"kind":{"source":"scratch"}}"#
        );
        // The same value `printf '%s' '<encoding>' | sha256sum` gives.
        assert_eq!(
            String::from_utf8(canonical_encoding(&alpine())).unwrap(),
            concat!(
                r#"{"inputs":[],"kind":{"source":{"image":{"reference":"docker.io/library/alpine:3.20","#,
                r#""platform":{"os":"linux","architecture":"amd64"}}}}}"#
            )
        );
        let alpine_digest = OpDigest::of(&alpine());
        assert_eq!(
            alpine_digest.to_string(),
            "sha256:96620be535ac4dfb61ebdc25918078e6ea23706222529eb80e55914761cf0b26"
        );
        let run_digest = OpDigest::of(&run(OpRef::new(alpine_digest), &["/bin/sh", "-c", "make"]));
        assert_eq!(
            run_digest.to_string(),
            "sha256:96c9771195c27bc8a4dd08c3d66585caffe164a117d8956f04ac63abb478621e"
        );
    }

    #[test]
    fn equal_ops_are_one_node() {
        let mut builder = DefinitionBuilder::new();
        let first = builder.add(alpine(), described("FROM alpine")).unwrap();
        let second = builder
            .add(alpine(), described("FROM alpine AS b"))
            .unwrap();
        assert_eq!(first, second);
        builder
            .add(run(first.clone(), &["true"]), OpMetadata::default())
            .unwrap();
        builder
            .add(run(first.clone(), &["true"]), OpMetadata::default())
            .unwrap();
        let definition = builder.build();
        assert_eq!(definition.len(), 2);
        // The first description wins.
        assert_eq!(
            definition
                .metadata(&first.digest)
                .unwrap()
                .description
                .as_deref(),
            Some("FROM alpine")
        );
    }

    #[test]
    fn metadata_does_not_change_the_digest() {
        let mut one = DefinitionBuilder::new();
        let mut two = DefinitionBuilder::new();
        let a = one.add(alpine(), described("one")).unwrap();
        let b = two
            .add(
                alpine(),
                OpMetadata {
                    description: Some("two".to_string()),
                    location: Some(SourceLocation {
                        file: "Dockerfile".to_string(),
                        start_line: 1,
                        end_line: 1,
                    }),
                    ignore_cache: true,
                },
            )
            .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn proxy_env_does_not_change_the_digest_but_env_does() {
        let base = OpRef::new(OpDigest::of(&alpine()));
        let plain = run(base.clone(), &["make"]);
        let mut proxied = plain.clone();
        let mut changed_env = plain.clone();
        if let OpKind::Exec(exec) = &mut proxied.kind {
            exec.proxy_env
                .push("HTTP_PROXY=http://proxy:3128".to_string());
        }
        if let OpKind::Exec(exec) = &mut changed_env.kind {
            exec.env.push("A=b".to_string());
        }
        assert_eq!(OpDigest::of(&plain), OpDigest::of(&proxied));
        assert_ne!(OpDigest::of(&plain), OpDigest::of(&changed_env));
    }

    #[test]
    fn digest_without_inputs_ignores_the_inputs() {
        let on_alpine = run(OpRef::new(OpDigest::of(&alpine())), &["make"]);
        let on_scratch = run(
            OpRef::new(OpDigest::of(&Op::source(SourceOp::Scratch))),
            &["make"],
        );
        assert_ne!(OpDigest::of(&on_alpine), OpDigest::of(&on_scratch));
        assert_eq!(
            OpDigest::of_op_without_inputs(&on_alpine),
            OpDigest::of_op_without_inputs(&on_scratch)
        );
    }

    #[test]
    fn adding_an_op_whose_input_is_missing_fails() {
        let mut builder = DefinitionBuilder::new();
        let missing = OpRef::new(OpDigest::of(&alpine()));
        let error = builder
            .add(run(missing, &["make"]), OpMetadata::default())
            .unwrap_err();
        assert!(matches!(error, DefinitionError::InputNotDefined { .. }));
        assert!(error.to_string().contains("not defined before it"));
    }

    #[test]
    fn bad_output_and_input_indexes_are_rejected() {
        let mut builder = DefinitionBuilder::new();
        let base = builder.add(alpine(), OpMetadata::default()).unwrap();
        let mut wrong_output = run(base.clone(), &["make"]);
        wrong_output.inputs[0].output = 1;
        assert!(matches!(
            builder.add(wrong_output, OpMetadata::default()),
            Err(DefinitionError::OutputOutOfRange { count: 1, .. })
        ));
        let mut wrong_index = run(base.clone(), &["make"]);
        if let OpKind::Exec(exec) = &mut wrong_index.kind {
            exec.mounts[0].input = Some(3);
        }
        assert!(matches!(
            builder.add(wrong_index, OpMetadata::default()),
            Err(DefinitionError::InputIndexOutOfRange { index: 3, .. })
        ));
        let mut no_root = run(base, &["make"]);
        if let OpKind::Exec(exec) = &mut no_root.kind {
            exec.mounts[0].target = "/mnt".to_string();
        }
        assert!(matches!(
            builder.add(no_root, OpMetadata::default()),
            Err(DefinitionError::ExecWithoutRootfs(_))
        ));
    }

    fn sample_definition() -> (Definition, OpRef) {
        let mut builder = DefinitionBuilder::new();
        let base = builder
            .add(alpine(), described("[1/3] FROM alpine"))
            .unwrap();
        let context = builder
            .add(
                Op::source(SourceOp::Local {
                    name: "context".to_string(),
                    include_patterns: vec!["src".to_string()],
                    exclude_patterns: Vec::new(),
                    follow_paths: Vec::new(),
                }),
                OpMetadata::default(),
            )
            .unwrap();
        let mut copy = CopyAction::new(1, "src", "/app/");
        copy.chown = Some(Chown {
            user: Some(UserSpec::Name("app".to_string())),
            group: Some(UserSpec::Id(10)),
        });
        copy.chmod = Some(Chmod::Octal(0o755));
        let copied = builder
            .add(
                Op {
                    inputs: vec![base, context],
                    kind: OpKind::File(FileOp {
                        base: Some(0),
                        actions: vec![
                            FileAction::Copy(copy),
                            FileAction::Mkdir(MkdirAction {
                                path: "/app/cache".to_string(),
                                mode: 0o755,
                                make_parents: true,
                                owner: None,
                            }),
                        ],
                    }),
                },
                described("[2/3] COPY src /app/"),
            )
            .unwrap();
        let built = builder
            .add(
                run(copied, &["/bin/sh", "-c", "make"]),
                described("[3/3] RUN make"),
            )
            .unwrap();
        (builder.build(), built)
    }

    #[test]
    fn json_round_trips_and_is_checked_on_load() {
        let (definition, _) = sample_definition();
        let json = definition.to_json();
        let back: Definition = serde_json::from_str(&json).unwrap();
        assert_eq!(back, definition);
        assert_eq!(back.ops(), definition.ops());

        // Reordering the ops breaks the dependency order.
        let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
        value["ops"].as_array_mut().unwrap().swap(0, 3);
        let error = serde_json::from_value::<Definition>(value).unwrap_err();
        assert!(
            error.to_string().contains("not defined before it"),
            "{error}"
        );

        // A tampered op no longer matches its stated digest.
        let mut value: serde_json::Value = serde_json::from_str(&json).unwrap();
        value["ops"][0]["op"]["kind"]["source"]["image"]["reference"] =
            serde_json::Value::String("docker.io/library/busybox:latest".to_string());
        let error = serde_json::from_value::<Definition>(value).unwrap_err();
        assert!(error.to_string().contains("has digest"), "{error}");
    }

    #[test]
    fn restricted_to_keeps_only_what_the_roots_need() {
        let (definition, built) = sample_definition();
        let alpine_ref = OpRef::new(OpDigest::of(&alpine()));
        let only_base = definition.restricted_to(std::slice::from_ref(&alpine_ref));
        assert_eq!(only_base.len(), 1);
        let everything = definition.restricted_to(&[built]);
        assert_eq!(everything, definition);
    }

    #[test]
    fn text_form_names_ops_and_inputs_by_short_digest() {
        let (definition, built) = sample_definition();
        let text = definition.to_string();
        let alpine_short = OpDigest::of(&alpine()).short().to_string();
        assert!(text.contains(&format!(
            "{alpine_short} source image docker.io/library/alpine:3.20 platform=linux/amd64"
        )));
        assert!(text.contains("# [3/3] RUN make"));
        assert!(text.contains(&format!(
            "{} exec [\"/bin/sh\", \"-c\", \"make\"]",
            built.digest.short()
        )));
        assert!(text.contains("copy "));
        assert!(text.contains("chown=app:10 chmod=755"));
        assert!(text.contains("mkdir \"/app/cache\" mode=755 parents"));
        assert_eq!(
            text.lines().filter(|line| !line.starts_with(' ')).count(),
            4
        );
    }
}

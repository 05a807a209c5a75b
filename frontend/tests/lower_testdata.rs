//! Parses and lowers the Dockerfiles in `testdata/lower/` and checks the op graph and the image
//! configs they produce.

use std::collections::BTreeMap;

use kiln_frontend::lower::{
    ImageResolver, LowerOptions, Lowered, OfflineResolver, ResolveError, ResolvedImage, lower,
};
use kiln_image::config::ImageConfig;
use kiln_llb::{FileAction, MountKind, OpKind, Platform, SourceOp};

fn testdata(name: &str) -> String {
    let path = format!("{}/../testdata/lower/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"))
}

fn platform(architecture: &str) -> Platform {
    Platform {
        os: "linux".to_string(),
        architecture: architecture.to_string(),
        variant: None,
    }
}

fn lower_file(name: &str, options: &LowerOptions, resolver: &dyn ImageResolver) -> Lowered {
    let dockerfile = kiln_frontend::parser::parse_dockerfile(&testdata(name), name).unwrap();
    lower(&dockerfile, options, resolver).unwrap()
}

fn history(lowered: &Lowered) -> Vec<(String, bool)> {
    lowered
        .target
        .config
        .history
        .iter()
        .map(|h| (h.created_by.clone(), h.empty_layer))
        .collect()
}

/// Base images with a little config, as a registry would return them.
struct FakeRegistry;

impl ImageResolver for FakeRegistry {
    fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage, ResolveError> {
        let mut config = ImageConfig::empty(
            &platform.os,
            &platform.architecture,
            platform.variant.as_deref(),
        );
        config.config.env = vec!["PATH=/usr/local/go/bin:/usr/bin:/bin".to_string()];
        config.config.cmd = Some(vec!["sh".to_string()]);
        let mut base_history = kiln_image::config::History::new("ADD rootfs.tar /", false);
        base_history.created = Some("2024-01-01T00:00:00Z".to_string());
        config.history.push(base_history);
        if !reference.starts_with("docker.io/library/") {
            return Err(ResolveError(
                format!("{reference}: not in the fake registry").into(),
            ));
        }
        Ok(ResolvedImage {
            config,
            digest: Some(format!("sha256:{}", "0f".repeat(32))),
        })
    }
}

#[test]
fn multistage_builds_only_what_the_target_needs() {
    let options = LowerOptions::new(platform("amd64"));
    let lowered = lower_file("multistage.Dockerfile", &options, &FakeRegistry);
    // The `unused` stage produced nothing.
    let indexes: Vec<usize> = lowered.stages.iter().map(|s| s.index).collect();
    assert_eq!(indexes, vec![0, 2]);
    assert!(!lowered.to_text().contains("never built"));

    // Image sources are pinned to the resolved digest.
    let images: Vec<String> = lowered
        .definition
        .ops()
        .iter()
        .filter_map(|op| match &op.kind {
            OpKind::Source(SourceOp::Image { reference, .. }) => Some(reference.clone()),
            _ => None,
        })
        .collect();
    let pin = format!("@sha256:{}", "0f".repeat(32));
    assert!(images.contains(&format!("docker.io/library/alpine:3.20{pin}")));
    assert!(images.contains(&format!("docker.io/library/golang:1.22{pin}")));

    // The build stage's RUN: cache and bind mounts, the ARG in its env and history.
    let build = &lowered.stages[0];
    let run = lowered.definition.get(&build.root.digest).unwrap();
    let OpKind::Exec(exec) = &run.kind else {
        panic!("the build stage should end with its RUN")
    };
    assert_eq!(exec.cwd, "/src");
    assert!(exec.env.contains(&"GO_VERSION=1.22".to_string()));
    assert!(exec.env.contains(&"GOFLAGS=-trimpath".to_string()));
    assert!(
        exec.mounts.iter().any(
            |m| matches!(&m.kind, MountKind::Cache { id, .. } if id == "/root/.cache/go-build")
        )
    );
    let bind = exec.mounts.iter().find(|m| m.target == "/src").unwrap();
    assert!(!bind.readonly);
    assert_eq!(
        build.config.history.last().unwrap().created_by,
        "RUN |1 GO_VERSION=1.22 /bin/sh -c go build -o /out/app ./cmd/app # buildkit"
    );
    assert_eq!(build.base_history_len, 1);

    // The final stage's config and history.
    let config = &lowered.target.config.config;
    assert_eq!(config.user, "1000:1000");
    assert_eq!(
        config.entrypoint,
        Some(vec!["/usr/local/bin/app".to_string()])
    );
    assert_eq!(config.cmd, Some(vec!["serve".to_string()]));
    assert_eq!(config.labels["org.opencontainers.image.title"], "demo app");
    // GO_VERSION is a meta ARG that the final stage does not re-declare.
    assert_eq!(config.labels["version"], "");
    assert_eq!(config.healthcheck.as_ref().unwrap().retries, 3);
    assert_eq!(
        history(&lowered),
        vec![
            ("ADD rootfs.tar /".to_string(), false),
            (
                "LABEL org.opencontainers.image.title=demo app version=".to_string(),
                true
            ),
            (
                "COPY --chmod=755 /out/app /usr/local/bin/app # buildkit".to_string(),
                false
            ),
            ("USER 1000:1000".to_string(), true),
            ("EXPOSE [8080/tcp 9090/udp]".to_string(), true),
            (
                "HEALTHCHECK {Test:[CMD-SHELL wget -qO- http://localhost:8080/ || exit 1] \
                 Interval:30s Timeout:0s StartPeriod:0s StartInterval:0s Retries:3}"
                    .to_string(),
                true
            ),
            (r#"ENTRYPOINT ["/usr/local/bin/app"]"#.to_string(), true),
            (r#"CMD ["serve"]"#.to_string(), true),
        ]
    );
    // Layers in the history match layer-producing ops: one COPY on top of the base.
    let new_layers = lowered.target.config.history[lowered.target.base_history_len..]
        .iter()
        .filter(|h| !h.empty_layer)
        .count();
    assert_eq!(new_layers, 1);
}

#[test]
fn multistage_target_option_picks_the_build_stage() {
    let mut options = LowerOptions::new(platform("amd64"));
    options.target = Some("build".to_string());
    options.build_args = BTreeMap::from([("GO_VERSION".to_string(), "1.23".to_string())]);
    let lowered = lower_file("multistage.Dockerfile", &options, &OfflineResolver);
    assert_eq!(lowered.stages.len(), 1);
    assert_eq!(
        lowered.target.base_image.as_deref(),
        Some("docker.io/library/golang:1.23")
    );
    assert!(lowered.warnings.is_empty());
}

#[test]
fn heredocs_become_scripts_files_and_a_merge() {
    let options = LowerOptions::new(platform("amd64"));
    let lowered = lower_file("heredocs.Dockerfile", &options, &OfflineResolver);
    let execs: Vec<&kiln_llb::ExecOp> = lowered
        .definition
        .ops()
        .iter()
        .filter_map(|op| match &op.kind {
            OpKind::Exec(exec) => Some(exec),
            _ => None,
        })
        .collect();
    assert_eq!(
        execs[0].args,
        vec!["/bin/sh", "-c", "set -e\necho \"$GREETING\" > /greeting\n"]
    );
    assert_eq!(execs[1].args, vec!["/bin/sh", "-c", "/dev/pipes/SCRIPT"]);
    let mkfiles: Vec<(String, String, u32)> = lowered
        .definition
        .ops()
        .iter()
        .filter_map(|op| match &op.kind {
            OpKind::File(file) => match &file.actions[0] {
                FileAction::Mkfile(m) => Some((m.path.clone(), m.data.clone(), m.mode)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert!(mkfiles.contains(&(
        "/SCRIPT".to_string(),
        "#!/bin/sh\necho from a script file\n".to_string(),
        0o755
    )));
    assert!(mkfiles.contains(&("/EOF".to_string(), "greeting=hello\n".to_string(), 0o644)));
    let root = lowered.definition.get(&lowered.target.root.digest).unwrap();
    assert!(matches!(root.kind, OpKind::Merge(_)));
    let created_by: Vec<String> = history(&lowered).into_iter().map(|(c, _)| c).collect();
    assert_eq!(
        created_by,
        vec![
            "ARG GREETING=hello",
            "RUN |1 GREETING=hello /bin/sh -c set -e\necho \"$GREETING\" > /greeting\n # buildkit",
            "RUN |1 GREETING=hello /bin/sh -c /dev/pipes/SCRIPT # buildkit",
            "COPY <<EOF /etc/app.conf # buildkit",
            "COPY /bin/busybox /bin/busybox # buildkit",
            r#"CMD ["/bin/sh" "-c" "cat /greeting"]"#,
        ]
    );
}

#[test]
fn platform_args_and_cross_stage_platforms() {
    let mut options = LowerOptions::new(platform("amd64"));
    options.target_platform = Some(platform("arm64"));
    let lowered = lower_file("args-and-platforms.Dockerfile", &options, &OfflineResolver);
    let tools = &lowered.stages[0];
    assert_eq!(tools.platform, platform("amd64"));
    assert_eq!(lowered.target.platform, platform("arm64"));
    let run = lowered.definition.get(&tools.root.digest).unwrap();
    let OpKind::Exec(exec) = &run.kind else {
        panic!()
    };
    assert!(exec.env.contains(&"TARGETOS=linux".to_string()));
    assert!(exec.env.contains(&"TARGETARCH=arm64".to_string()));
    assert!(exec.env.contains(&"VERSION=1.0".to_string()));
    let config = &lowered.target.config;
    assert_eq!(config.architecture, "arm64");
    assert_eq!(config.config.env_get("APP_VERSION"), Some("1.0"));
    assert_eq!(config.config.working_dir, "/app/data");
    assert_eq!(config.config.user, "nobody");
    let created_by: Vec<String> = history(&lowered).into_iter().map(|(c, _)| c).collect();
    assert_eq!(
        created_by,
        vec![
            "ARG VERSION=1.0",
            "ENV APP_VERSION=1.0",
            "COPY /built /built # buildkit",
            "WORKDIR /app",
            "WORKDIR /app/data",
            "USER nobody",
        ]
    );
}

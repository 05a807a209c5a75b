//! Lowering: typed instructions of the stages a target needs → one LLB `Definition` plus the image
//! config each stage produces.
//!
//! The rules are BuildKit's `dockerfile2llb`, because Dockerfiles in the wild are written against
//! them: which instructions expand variables (ADD COPY ENV EXPOSE FROM LABEL STOPSIGNAL USER
//! VOLUME WORKDIR, ARG defaults and `RUN --mount` values), ARG scoping (meta ARGs before the first
//! FROM reach FROM lines, and a stage only when it re-declares them), the history entries each
//! instruction writes (`RUN |1 A=b /bin/sh -c make # buildkit`, `ENV A=b`, …), SHELL/USER/ENV/
//! WORKDIR feeding later RUNs, ONBUILD triggers of the base running right after FROM, and
//! `--target` selecting the stage whose dependencies alone are lowered.
//!
//! - [`lower`] is the entry point; [`ImageResolver`] supplies base image configs.
//! - `stage`: one stage's instructions → ops and config.
//! - `names`: references, platforms, paths, chmod/chown and Go-style formatting.

mod names;
mod stage;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use kiln_image::config::ImageConfig;
use kiln_llb::{Definition, DefinitionBuilder, NetworkMode, OpRef, Platform};

use crate::instructions::{Dockerfile, InstructionKind, Location};
use crate::shell::{Lexer, ShellError};

pub use names::{normalize_reference, parse_platform};

/// What to build and with which parameters.
#[derive(Debug, Clone)]
pub struct LowerOptions {
    /// The stage to build (by name); the last stage when `None`.
    pub target: Option<String>,
    /// `--build-arg` values; they override ARG defaults of the same name.
    pub build_args: BTreeMap<String, String>,
    /// The platform kiln runs on (`BUILDPLATFORM`).
    pub build_platform: Platform,
    /// `--platform`; `None` builds for the build platform.
    pub target_platform: Option<Platform>,
    /// The name of the main build context's Local source.
    pub context_name: String,
    /// `--build-context NAME=…` contexts, used where a FROM, `COPY --from` or `--mount from=`
    /// names them.
    pub named_contexts: BTreeMap<String, NamedContext>,
    /// `--label` values added to the target's config.
    pub labels: BTreeMap<String, String>,
    /// The Dockerfile's name, for locations in errors and op metadata.
    pub dockerfile_name: String,
    /// `--network` for RUN steps that do not say otherwise.
    pub network: NetworkMode,
    /// `--no-cache`: every op is marked "ignore cache".
    pub no_cache: bool,
    /// `--no-cache-filter`: stages (by name) whose ops are marked "ignore cache".
    pub no_cache_filter: Vec<String>,
}

impl LowerOptions {
    /// Defaults for building on (and for) the platform kiln runs on.
    pub fn for_host() -> LowerOptions {
        LowerOptions::new(llb_platform(&kiln_image::Platform::host()))
    }

    /// Defaults for building on (and for) `build_platform`.
    pub fn new(build_platform: Platform) -> LowerOptions {
        LowerOptions {
            target: None,
            build_args: BTreeMap::new(),
            build_platform,
            target_platform: None,
            context_name: "context".to_string(),
            named_contexts: BTreeMap::new(),
            labels: BTreeMap::new(),
            dockerfile_name: "Dockerfile".to_string(),
            network: NetworkMode::Sandbox,
            no_cache: false,
            no_cache_filter: Vec::new(),
        }
    }
}

/// The llb form of an image platform.
pub fn llb_platform(platform: &kiln_image::Platform) -> Platform {
    Platform {
        os: platform.os.clone(),
        architecture: platform.architecture.clone(),
        variant: platform.variant.clone(),
    }
}

/// What a `--build-context` name stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamedContext {
    /// A local directory, transferred as a Local source of this name.
    Local,
    /// An image (`docker-image://ref`).
    Image(String),
}

/// A resolved base image: its config and, when known, the manifest digest to pin the source to.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    pub config: ImageConfig,
    /// `sha256:…` of the manifest; the Image source then names `ref@digest`.
    pub digest: Option<String>,
}

/// Why an image could not be resolved (the resolver's own error, kept as the source).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct ResolveError(pub Box<dyn std::error::Error + Send + Sync>);

/// Looks up base images: the store or a registry in a real build, an empty config offline.
pub trait ImageResolver {
    /// The config of `reference` (normalised, e.g. `docker.io/library/alpine:3.20`) for
    /// `platform`.
    ///
    /// # Errors
    /// [`ResolveError`] when the image cannot be found or read.
    fn resolve(&self, reference: &str, platform: &Platform) -> Result<ResolvedImage, ResolveError>;
}

/// Resolves every image to an empty config for the requested platform (`--offline`, tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct OfflineResolver;

impl ImageResolver for OfflineResolver {
    fn resolve(
        &self,
        _reference: &str,
        platform: &Platform,
    ) -> Result<ResolvedImage, ResolveError> {
        Ok(ResolvedImage {
            config: ImageConfig::empty(
                &platform.os,
                &platform.architecture,
                platform.variant.as_deref(),
            ),
            digest: None,
        })
    }
}

/// The result of lowering one Dockerfile for one target.
#[derive(Debug, Clone)]
pub struct Lowered {
    pub definition: Definition,
    pub target: StageResult,
    /// Every stage that was lowered (the target and what it needs), in Dockerfile order.
    pub stages: Vec<StageResult>,
    pub warnings: Vec<LowerWarning>,
}

/// What one stage produces.
#[derive(Debug, Clone)]
pub struct StageResult {
    /// Position in the Dockerfile (0-based).
    pub index: usize,
    pub name: Option<String>,
    /// The stage's final root filesystem.
    pub root: OpRef,
    pub platform: Platform,
    /// The image config, without `rootfs.diff_ids` (the exporter knows the layers) and with the
    /// full history: the base image's entries first, then one per instruction.
    pub config: ImageConfig,
    /// How many leading `config.history` entries came from the base image.
    pub base_history_len: usize,
    /// The normalised reference of the image the stage's chain starts from, if any.
    pub base_image: Option<String>,
}

/// A non-fatal finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LowerWarning {
    pub location: Option<Location>,
    pub message: String,
}

/// A lowering failure with the Dockerfile line it concerns.
#[derive(Debug, thiserror::Error)]
#[error("{}{kind}", location_prefix(.file, .location))]
pub struct LowerError {
    pub file: String,
    pub location: Option<Location>,
    pub kind: LowerErrorKind,
}

fn location_prefix(file: &str, location: &Option<Location>) -> String {
    match location {
        Some(location) if location.start_line > 0 => format!("{file}:{}: ", location.start_line),
        _ if file.is_empty() => String::new(),
        _ => format!("{file}: "),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LowerErrorKind {
    #[error("the Dockerfile has no stages to build")]
    NoStages,
    #[error("target stage {target:?} could not be found (stages: {available})")]
    TargetNotFound { target: String, available: String },
    #[error("empty build arg name in --build-arg")]
    EmptyBuildArgName,
    #[error("empty ARG name")]
    EmptyArgName,
    #[error("base name ({word}) should not be blank")]
    EmptyBaseName { word: String },
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    #[error("invalid platform {value:?}: {reason}")]
    InvalidPlatform { value: String, reason: String },
    #[error("failed to resolve image {reference}: {source}")]
    Resolve {
        reference: String,
        #[source]
        source: ResolveError,
    },
    #[error(transparent)]
    Expansion(#[from] ShellError),
    #[error("circular dependency detected on stage: {stage} ({cycle})")]
    CircularStages { stage: String, cycle: String },
    #[error(
        "cannot copy from stage {from:?}, it needs to be defined before current stage {current:?}"
    )]
    StageNotDefinedBefore { from: String, current: String },
    #[error("invalid stage index {index}: the Dockerfile has {count} stage(s)")]
    InvalidStageIndex { index: usize, count: usize },
    #[error(
        "variable expansion is not supported for --from ({value}); define a new stage with FROM \
         using ARG from global scope as a workaround"
    )]
    FromExpansion { value: String },
    #[error("{0}")]
    BadChmod(String),
    #[error("invalid --chown value: {0}")]
    BadChown(String),
    #[error("invalid --checksum: {0}")]
    BadChecksum(String),
    #[error("source can't be a URL for COPY: {0}")]
    UrlInCopy(String),
    #[error("source can't be a git ref for COPY: {0}")]
    GitInCopy(String),
    #[error("COPY/ADD heredoc source {0:?} has no matching heredoc body")]
    MissingHeredoc(String),
    #[error("invalid RUN --mount: {0}")]
    BadMount(String),
    #[error("invalid RUN --network value {0:?} (expected default, none or host)")]
    BadNetwork(String),
    #[error("invalid RUN --security value {0:?} (expected sandbox or insecure)")]
    BadSecurity(String),
    #[error("invalid EXPOSE value: {0}")]
    BadExpose(String),
    #[error("VOLUME specified can not be an empty string")]
    EmptyVolume,
    #[error("WORKDIR cannot be empty")]
    EmptyWorkdir,
    #[error("invalid STOPSIGNAL {0:?}: not a known signal name or number")]
    BadStopSignal(String),
    #[error("invalid ONBUILD trigger {trigger:?} of the base image: {reason}")]
    BadOnbuildTrigger { trigger: String, reason: String },
    #[error("invalid SOURCE_DATE_EPOCH {0:?}: expected seconds since 1970 as an integer")]
    BadSourceDateEpoch(String),
    #[error("the definition is inconsistent (a kiln bug): {0}")]
    Definition(kiln_llb::DefinitionError),
}

impl From<kiln_llb::DefinitionError> for LowerErrorKind {
    fn from(error: kiln_llb::DefinitionError) -> Self {
        LowerErrorKind::Definition(error)
    }
}

/// Lowers the stages `options.target` needs into one definition and the image configs.
///
/// # Errors
/// [`LowerError`] naming the Dockerfile line: unknown target, stage or image in `--from`,
/// circular or forward stage references, variables that fail to expand, bad `--chmod`/`--chown`/
/// `--mount`/`--network` values, bad EXPOSE/STOPSIGNAL/VOLUME values, an empty build arg name, or
/// a base image the resolver cannot resolve.
pub fn lower(
    dockerfile: &Dockerfile,
    options: &LowerOptions,
    resolver: &dyn ImageResolver,
) -> Result<Lowered, LowerError> {
    let mut lowerer = Lowerer::new(dockerfile, options, resolver)?;
    let target = lowerer.target_index()?;
    lowerer.check_cycles()?;
    lowerer.lower_stage(target, None)?;
    lowerer.finish(target)
}

/// The predefined ARGs available in FROM lines (and in stages that declare them).
fn platform_args(options: &LowerOptions, target_stage: &str) -> Vec<(String, String)> {
    let build = &options.build_platform;
    let target = options.target_platform.as_ref().unwrap_or(build);
    let pairs = [
        ("BUILDPLATFORM", names::format_platform(build)),
        ("BUILDOS", build.os.clone()),
        ("BUILDARCH", build.architecture.clone()),
        ("BUILDVARIANT", build.variant.clone().unwrap_or_default()),
        ("TARGETPLATFORM", names::format_platform(target)),
        ("TARGETOS", target.os.clone()),
        ("TARGETARCH", target.architecture.clone()),
        ("TARGETVARIANT", target.variant.clone().unwrap_or_default()),
        ("TARGETSTAGE", target_stage.to_string()),
    ];
    pairs
        .into_iter()
        .map(|(key, value)| {
            let value = options.build_args.get(key).cloned().unwrap_or(value);
            (key.to_string(), value)
        })
        .collect()
}

/// Build args that are consumed without an ARG declaration (so never reported as unused).
fn is_predefined_arg(name: &str) -> bool {
    const PREDEFINED: &[&str] = &[
        "BUILDPLATFORM",
        "BUILDOS",
        "BUILDARCH",
        "BUILDVARIANT",
        "TARGETPLATFORM",
        "TARGETOS",
        "TARGETARCH",
        "TARGETVARIANT",
        "TARGETSTAGE",
        "SOURCE_DATE_EPOCH",
    ];
    PREDEFINED.contains(&name) || name.starts_with("BUILDKIT_") || proxy_arg(name).is_some()
}

/// The canonical (upper-case) name when `name` is one of the proxy args Docker passes to RUN
/// without a declaration.
fn proxy_arg(name: &str) -> Option<&'static str> {
    [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "FTP_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
    ]
    .into_iter()
    .find(|proxy| proxy.eq_ignore_ascii_case(name))
}

/// An ordered environment: setting an existing key replaces it in place (llb's `EnvList`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OrderedEnv(Vec<(String, String)>);

impl OrderedEnv {
    fn set(&mut self, key: &str, value: &str) {
        match self.0.iter_mut().find(|(existing, _)| existing == key) {
            Some(entry) => entry.1 = value.to_string(),
            None => self.0.push((key.to_string(), value.to_string())),
        }
    }

    fn lookup(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(existing, _)| existing == key)
            .map(|(_, value)| value.as_str())
    }

    fn to_entries(&self) -> Vec<String> {
        self.0.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }
}

impl crate::shell::Env for OrderedEnv {
    fn get(&self, name: &str) -> Option<String> {
        self.lookup(name).map(str::to_string)
    }
}

/// Where a stage's FROM starts.
#[derive(Debug, Clone)]
enum StageBase {
    Scratch,
    Stage(usize),
    Image(String),
    Context(String),
}

/// What the pre-pass learns about a stage before lowering anything.
#[derive(Debug, Clone)]
struct StageInfo {
    name: Option<String>,
    base: StageBase,
    /// `--platform` of the FROM, expanded and parsed.
    platform: Option<Platform>,
    /// Stages referred to by FROM, `COPY --from` and `RUN --mount from=`, for the cycle check.
    deps: BTreeSet<usize>,
    /// A named build context of the stage's name stands in for the whole stage.
    replaced: bool,
}

/// Lowering state shared by all stages.
struct Lowerer<'a> {
    dockerfile: &'a Dockerfile,
    options: &'a LowerOptions,
    resolver: &'a dyn ImageResolver,
    lexer: Lexer,
    builder: DefinitionBuilder,
    /// Meta ARGs (and the predefined platform args) as FROM lines see them.
    global_args: OrderedEnv,
    stages: Vec<StageInfo>,
    lowered: Vec<Option<stage::StageState>>,
    warnings: Vec<LowerWarning>,
    /// Names declared by an ARG somewhere in what was lowered (meta ARGs included).
    declared_args: BTreeSet<String>,
    resolved_images: HashMap<(String, Platform), ResolvedImage>,
    context_source: Option<OpRef>,
    /// `SOURCE_DATE_EPOCH` as RFC 3339: the creation time of every new history entry.
    epoch: Option<String>,
}

impl<'a> Lowerer<'a> {
    fn new(
        dockerfile: &'a Dockerfile,
        options: &'a LowerOptions,
        resolver: &'a dyn ImageResolver,
    ) -> Result<Lowerer<'a>, LowerError> {
        let file = options.dockerfile_name.clone();
        let error = |location: Option<Location>, kind| LowerError {
            file: file.clone(),
            location,
            kind,
        };
        if options.build_args.contains_key("") {
            return Err(error(None, LowerErrorKind::EmptyBuildArgName));
        }
        if dockerfile.stages.is_empty() {
            return Err(error(None, LowerErrorKind::NoStages));
        }
        let lexer = Lexer::new(dockerfile.directives.escape);
        let epoch = match options.build_args.get("SOURCE_DATE_EPOCH") {
            Some(value) if !value.is_empty() => {
                Some(names::rfc3339_utc(value.parse::<u64>().map_err(|_| {
                    error(None, LowerErrorKind::BadSourceDateEpoch(value.clone()))
                })?))
            }
            _ => None,
        };
        let target_name = match &options.target {
            Some(target) => target.clone(),
            None => dockerfile
                .stages
                .last()
                .and_then(|stage| stage.from.name.clone())
                .unwrap_or_default(),
        };
        let mut global_args = OrderedEnv::default();
        for (key, value) in platform_args(options, &target_name) {
            global_args.set(&key, &value);
        }
        let mut declared_args = BTreeSet::new();
        for arg in &dockerfile.meta_args {
            for decl in &arg.args {
                if decl.name.is_empty() {
                    return Err(error(Some(arg.location), LowerErrorKind::EmptyArgName));
                }
                declared_args.insert(decl.name.clone());
                let value = match (options.build_args.get(&decl.name), &decl.default) {
                    (Some(value), _) => Some(value.clone()),
                    (None, Some(default)) => Some(
                        lexer
                            .process_word(default, &global_args)
                            .map_err(|e| error(Some(arg.location), e.into()))?
                            .value,
                    ),
                    (None, None) => None,
                };
                if let Some(value) = value {
                    global_args.set(&decl.name, &value);
                }
            }
        }
        let warnings = dockerfile
            .warnings
            .iter()
            .map(|warning| LowerWarning {
                location: Some(warning.location),
                message: warning.message.clone(),
            })
            .collect();
        let mut lowerer = Lowerer {
            dockerfile,
            options,
            resolver,
            lexer,
            builder: DefinitionBuilder::new(),
            global_args,
            stages: Vec::new(),
            lowered: vec![None; dockerfile.stages.len()],
            warnings,
            declared_args,
            resolved_images: HashMap::new(),
            context_source: None,
            epoch,
        };
        lowerer.stages = lowerer.stage_infos()?;
        Ok(lowerer)
    }

    fn error(&self, location: Option<Location>, kind: LowerErrorKind) -> LowerError {
        LowerError {
            file: self.options.dockerfile_name.clone(),
            location,
            kind,
        }
    }

    /// Expands every FROM and finds each stage's base and dependencies.
    fn stage_infos(&self) -> Result<Vec<StageInfo>, LowerError> {
        let mut infos: Vec<StageInfo> = Vec::new();
        for stage in &self.dockerfile.stages {
            let at = Some(stage.location);
            let image = self
                .lexer
                .process_word(&stage.from.image, &self.global_args)
                .map_err(|e| self.error(at, e.into()))?
                .value;
            if image.is_empty() {
                return Err(self.error(
                    at,
                    LowerErrorKind::EmptyBaseName {
                        word: stage.from.image.clone(),
                    },
                ));
            }
            let platform = match &stage.from.platform {
                Some(raw) => {
                    let value = self
                        .lexer
                        .process_word(raw, &self.global_args)
                        .map_err(|e| self.error(at, e.into()))?
                        .value;
                    Some(
                        names::parse_platform(&value, &self.options.build_platform).map_err(
                            |reason| {
                                self.error(at, LowerErrorKind::InvalidPlatform { value, reason })
                            },
                        )?,
                    )
                }
                None => None,
            };
            let earlier_stage = infos
                .iter()
                .position(|info| info.name.as_deref() == Some(image.to_lowercase().as_str()));
            // `--build-context NAME=…` for a stage's own name replaces the whole stage.
            let replacement = stage
                .from
                .name
                .as_deref()
                .filter(|name| !matches!(*name, "scratch" | "context"))
                .and_then(|name| self.named_context(name));
            let base = if let Some((name, context)) = replacement {
                match context {
                    NamedContext::Local => StageBase::Context(name.to_string()),
                    // `docker-image://scratch` is the empty filesystem, as in BuildKit.
                    NamedContext::Image(reference) if reference == "scratch" => StageBase::Scratch,
                    NamedContext::Image(reference) => {
                        StageBase::Image(self.normalize(reference, at)?)
                    }
                }
            } else if let Some(base) = earlier_stage {
                StageBase::Stage(base)
            } else if image.eq_ignore_ascii_case("scratch") {
                StageBase::Scratch
            } else if let Some((key, context)) = self.named_context(&image) {
                match context {
                    NamedContext::Local => StageBase::Context(key.to_string()),
                    NamedContext::Image(reference) if reference == "scratch" => StageBase::Scratch,
                    NamedContext::Image(reference) => {
                        StageBase::Image(self.normalize(reference, at)?)
                    }
                }
            } else {
                StageBase::Image(self.normalize(&image, at)?)
            };
            let mut deps = BTreeSet::new();
            if let StageBase::Stage(base) = base {
                deps.insert(base);
            }
            for instruction in stage.instructions.iter().filter(|_| replacement.is_none()) {
                for from in referenced_from_values(&instruction.kind) {
                    if let Some(dep) = self.stage_by_reference(&from) {
                        deps.insert(dep);
                    }
                }
            }
            infos.push(StageInfo {
                name: stage.from.name.clone(),
                base,
                platform,
                deps,
                replaced: replacement.is_some(),
            });
        }
        Ok(infos)
    }

    /// The named context `name` refers to, with its key: by the name as written, else (as
    /// BuildKit) by its familiar form without `:latest` (`docker.io/library/alpine:latest` finds
    /// `alpine`).
    fn named_context(&self, name: &str) -> Option<(&str, &NamedContext)> {
        let contexts = &self.options.named_contexts;
        if let Some((key, context)) = contexts.get_key_value(name) {
            return Some((key.as_str(), context));
        }
        let normalized = names::normalize_reference(name).ok()?;
        let familiar = normalized
            .strip_prefix("docker.io/library/")
            .or_else(|| normalized.strip_prefix("docker.io/"))
            .unwrap_or(&normalized);
        let familiar = familiar.strip_suffix(":latest").unwrap_or(familiar);
        contexts
            .get_key_value(familiar)
            .map(|(key, context)| (key.as_str(), context))
    }

    fn normalize(&self, reference: &str, at: Option<Location>) -> Result<String, LowerError> {
        names::normalize_reference(reference).map_err(|reason| {
            self.error(
                at,
                LowerErrorKind::InvalidReference {
                    reference: reference.to_string(),
                    reason,
                },
            )
        })
    }

    /// The stage a `--from` value names: an index, or a stage name (case-insensitive).
    fn stage_by_reference(&self, value: &str) -> Option<usize> {
        if let Ok(index) = value.parse::<usize>() {
            return Some(index);
        }
        let lower = value.to_lowercase();
        self.dockerfile
            .stages
            .iter()
            .position(|stage| stage.from.name.as_deref() == Some(lower.as_str()))
    }

    fn stage_display_name(&self, index: usize) -> String {
        self.stages
            .get(index)
            .and_then(|info| info.name.clone())
            .unwrap_or_else(|| format!("stage-{index}"))
    }

    fn target_index(&self) -> Result<usize, LowerError> {
        match &self.options.target {
            None => Ok(self.dockerfile.stages.len() - 1),
            Some(target) => {
                let lower = target.to_lowercase();
                self.stages
                    .iter()
                    .position(|info| info.name.as_deref() == Some(lower.as_str()))
                    .ok_or_else(|| {
                        let available: Vec<String> = self
                            .stages
                            .iter()
                            .filter_map(|info| info.name.clone())
                            .collect();
                        self.error(
                            None,
                            LowerErrorKind::TargetNotFound {
                                target: target.clone(),
                                available: if available.is_empty() {
                                    "none is named".to_string()
                                } else {
                                    available.join(", ")
                                },
                            },
                        )
                    })
            }
        }
    }

    /// Reports the first cycle among stage dependencies (of all stages, as BuildKit does).
    fn check_cycles(&self) -> Result<(), LowerError> {
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Visiting,
            Done,
        }
        fn visit(
            node: usize,
            stages: &[StageInfo],
            marks: &mut [Mark],
            path: &mut Vec<usize>,
        ) -> Option<Vec<usize>> {
            marks[node] = Mark::Visiting;
            path.push(node);
            for &dep in &stages[node].deps {
                if dep >= stages.len() {
                    continue;
                }
                match marks[dep] {
                    Mark::Visiting => {
                        let start = path.iter().position(|&n| n == dep).unwrap_or(0);
                        let mut cycle = path[start..].to_vec();
                        cycle.push(dep);
                        return Some(cycle);
                    }
                    Mark::New => {
                        if let Some(cycle) = visit(dep, stages, marks, path) {
                            return Some(cycle);
                        }
                    }
                    Mark::Done => {}
                }
            }
            path.pop();
            marks[node] = Mark::Done;
            None
        }
        let mut marks = vec![Mark::New; self.stages.len()];
        for start in 0..self.stages.len() {
            if marks[start] == Mark::New {
                if let Some(cycle) = visit(start, &self.stages, &mut marks, &mut Vec::new()) {
                    let names: Vec<String> =
                        cycle.iter().map(|&i| self.stage_display_name(i)).collect();
                    return Err(self.error(
                        Some(self.dockerfile.stages[cycle[0]].location),
                        LowerErrorKind::CircularStages {
                            stage: names[0].clone(),
                            cycle: names.join(" -> "),
                        },
                    ));
                }
            }
        }
        Ok(())
    }

    /// Adds an op to the definition (a no-op for an equal op already there).
    fn add_op(
        &mut self,
        op: kiln_llb::Op,
        metadata: kiln_llb::OpMetadata,
    ) -> Result<OpRef, LowerError> {
        self.builder
            .add(op, metadata)
            .map_err(|error| self.error(None, error.into()))
    }

    /// The Local source of the main build context, added once.
    fn context_source(&mut self) -> Result<OpRef, LowerError> {
        if let Some(source) = &self.context_source {
            return Ok(source.clone());
        }
        let name = self.options.context_name.clone();
        let source = self.local_source(&name)?;
        self.context_source = Some(source.clone());
        Ok(source)
    }

    fn local_source(&mut self, name: &str) -> Result<OpRef, LowerError> {
        // Include/exclude patterns stay empty: `.dockerignore` is applied by the context reader,
        // and each COPY is keyed by exactly the paths it selects, so narrowing here would only
        // split one context into several sources.
        let op = kiln_llb::Op::source(kiln_llb::SourceOp::Local {
            name: name.to_string(),
            include_patterns: Vec::new(),
            exclude_patterns: Vec::new(),
            follow_paths: Vec::new(),
        });
        let metadata = kiln_llb::OpMetadata {
            description: Some(format!("[internal] load build context {name}")),
            ..Default::default()
        };
        self.add_op(op, metadata)
    }

    /// Resolves `reference` for `platform` once per build.
    fn resolve_image(
        &mut self,
        reference: &str,
        platform: &Platform,
        at: Option<Location>,
    ) -> Result<ResolvedImage, LowerError> {
        let key = (reference.to_string(), platform.clone());
        if let Some(resolved) = self.resolved_images.get(&key) {
            return Ok(resolved.clone());
        }
        let resolved = self
            .resolver
            .resolve(reference, platform)
            .map_err(|source| {
                self.error(
                    at,
                    LowerErrorKind::Resolve {
                        reference: reference.to_string(),
                        source,
                    },
                )
            })?;
        self.resolved_images.insert(key, resolved.clone());
        Ok(resolved)
    }

    /// The Image source op for `reference`, pinned to its digest when the resolver knows it.
    fn image_source(
        &mut self,
        reference: &str,
        platform: &Platform,
        description: Option<String>,
        at: Option<Location>,
    ) -> Result<(OpRef, ResolvedImage), LowerError> {
        let resolved = self.resolve_image(reference, platform, at)?;
        let pinned = match &resolved.digest {
            Some(digest) if !reference.contains('@') => format!("{reference}@{digest}"),
            _ => reference.to_string(),
        };
        let op = kiln_llb::Op::source(kiln_llb::SourceOp::Image {
            reference: pinned.clone(),
            platform: Some(platform.clone()),
        });
        let metadata = kiln_llb::OpMetadata {
            description: Some(description.unwrap_or_else(|| format!("FROM {pinned}"))),
            location: at.map(|location| self.source_location(location)),
            ignore_cache: false,
        };
        Ok((self.add_op(op, metadata)?, resolved))
    }

    fn source_location(&self, location: Location) -> kiln_llb::SourceLocation {
        kiln_llb::SourceLocation {
            file: self.options.dockerfile_name.clone(),
            start_line: location.start_line,
            end_line: location.end_line,
        }
    }

    /// The default target platform: `--platform` or the build platform.
    fn target_platform(&self) -> Platform {
        self.options
            .target_platform
            .clone()
            .unwrap_or_else(|| self.options.build_platform.clone())
    }

    /// Lowers stage `index` (once) after what it depends on. `needed_by` is the stage asking,
    /// which must come later in the file.
    fn lower_stage(
        &mut self,
        index: usize,
        needed_by: Option<(usize, Option<Location>)>,
    ) -> Result<stage::StageState, LowerError> {
        if let Some((current, at)) = needed_by {
            if index >= current {
                return Err(self.error(
                    at,
                    LowerErrorKind::StageNotDefinedBefore {
                        from: self.stage_display_name(index),
                        current: self.stage_display_name(current),
                    },
                ));
            }
        }
        if let Some(state) = &self.lowered[index] {
            return Ok(state.clone());
        }
        let state = stage::lower_stage(self, index)?;
        self.lowered[index] = Some(state.clone());
        Ok(state)
    }

    fn finish(mut self, target: usize) -> Result<Lowered, LowerError> {
        let unused: Vec<&String> = self
            .options
            .build_args
            .keys()
            .filter(|name| !self.declared_args.contains(*name) && !is_predefined_arg(name))
            .collect();
        if !unused.is_empty() {
            let names: Vec<&str> = unused.iter().map(|name| name.as_str()).collect();
            self.warnings.push(LowerWarning {
                location: None,
                message: format!(
                    "One or more build-args [{}] were not consumed",
                    names.join(" ")
                ),
            });
        }
        let mut stages = Vec::new();
        for (index, state) in self.lowered.iter().enumerate() {
            let Some(state) = state else { continue };
            let mut config = state.config.clone();
            if index == target {
                for (key, value) in &self.options.labels {
                    config.config.labels.insert(key.clone(), value.clone());
                }
                if let Some(platform) = &self.options.target_platform {
                    let same_os_arch =
                        platform.os == config.os && platform.architecture == config.architecture;
                    config.os = platform.os.clone();
                    config.architecture = platform.architecture.clone();
                    if platform.variant.is_some() || !same_os_arch {
                        config.variant = platform.variant.clone().unwrap_or_default();
                    }
                }
            }
            stages.push(StageResult {
                index,
                name: self.stages[index].name.clone(),
                root: state.root.clone(),
                platform: state.platform.clone(),
                config,
                base_history_len: state.base_history_len,
                base_image: state.base_image.clone(),
            });
        }
        let Some(target_result) = stages.iter().find(|stage| stage.index == target).cloned() else {
            return Err(self.error(None, LowerErrorKind::NoStages));
        };
        Ok(Lowered {
            definition: self.builder.build(),
            target: target_result,
            stages,
            warnings: self.warnings,
        })
    }
}

/// The raw `--from` values of COPY/ADD and `RUN --mount from=`, for the dependency pre-pass.
fn referenced_from_values(kind: &InstructionKind) -> Vec<String> {
    match kind {
        InstructionKind::Copy(copy) | InstructionKind::Add(copy) => {
            copy.from.iter().cloned().collect()
        }
        InstructionKind::Run(run) => run
            .mounts
            .iter()
            .filter_map(|mount| {
                mount.split(',').find_map(|field| {
                    let (key, value) = field.split_once('=')?;
                    key.trim()
                        .eq_ignore_ascii_case("from")
                        .then(|| value.trim_matches('"').to_string())
                })
            })
            .collect(),
        InstructionKind::Onbuild(onbuild) => referenced_from_values(&onbuild.instruction.kind),
        _ => Vec::new(),
    }
}

impl Lowered {
    /// The text `kiln debug llb` prints: the op graph, then each stage's root and config.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# ops ({})", self.definition.len());
        out.push_str(&self.definition.to_string());
        for stage in &self.stages {
            let marker = if stage.index == self.target.index {
                " (target)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "\n# stage {} {}{marker}: root {} platform {}",
                stage.index,
                stage.name.as_deref().unwrap_or("-"),
                stage.root.digest.short(),
                stage.platform
            );
            let json = serde_json::to_string_pretty(&stage.config)
                .unwrap_or_else(|error| format!("<config not serialisable: {error}>"));
            out.push_str(&json);
            out.push('\n');
        }
        for warning in &self.warnings {
            match warning.location {
                Some(location) => {
                    let _ = writeln!(
                        out,
                        "# warning (line {}): {}",
                        location.start_line, warning.message
                    );
                }
                None => {
                    let _ = writeln!(out, "# warning: {}", warning.message);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;

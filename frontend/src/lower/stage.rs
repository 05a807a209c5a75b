//! One stage's lowering: its FROM (an image, scratch, another stage or a named context), the
//! ONBUILD triggers of that base, then each instruction in turn — RUN becomes an Exec op,
//! COPY/ADD/WORKDIR become File ops (Merge for `COPY --link`), and the metadata instructions
//! change the image config. Every instruction appends the history entry BuildKit writes.

use kiln_image::config::{Healthcheck as ConfigHealthcheck, History, ImageConfig, RootFs};
use kiln_llb::{
    CacheSharing as LlbCacheSharing, CopyAction, ExecOp, FileAction, FileOp, MergeOp, MkdirAction,
    MkfileAction, Mount as LlbMount, MountKind as LlbMountKind, NetworkMode, Op, OpKind,
    OpMetadata, OpRef, Platform, SecretEnv, SecurityMode, SourceOp,
};

use super::names;
use super::{LowerError, LowerErrorKind, Lowerer, NamedContext, OrderedEnv, StageBase, proxy_arg};
use crate::instructions::{
    ArgInstruction, CacheSharing, CommandForm, CopyInstruction, Healthcheck, Instruction,
    InstructionKind, KeyValue, Location, MountKind, RunInstruction,
};
use crate::parser;
use crate::shell::{Lexer, LexerOptions};

const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The state a stage leaves behind; stages built FROM it continue from here.
#[derive(Debug, Clone)]
pub(crate) struct StageState {
    pub root: OpRef,
    pub config: ImageConfig,
    pub platform: Platform,
    /// The environment RUN steps see and expansion uses: the config's Env plus stage ARGs.
    pub env: OrderedEnv,
    pub cwd: String,
    pub user: String,
    /// ARGs declared in the stage (and its base stages) with their values, in order.
    pub build_args: Vec<(String, Option<String>)>,
    pub base_history_len: usize,
    pub base_image: Option<String>,
}

/// Lowers stage `index` of the Dockerfile.
pub(crate) fn lower_stage(lw: &mut Lowerer<'_>, index: usize) -> Result<StageState, LowerError> {
    let info = lw.stages[index].clone();
    let stage = &lw.dockerfile.stages[index];
    let from_location = Some(stage.location);
    let default_platform = info
        .platform
        .clone()
        .unwrap_or_else(|| lw.target_platform());
    let single_stage = lw.dockerfile.stages.len() == 1;
    let prefix_name = if single_stage {
        String::new()
    } else {
        lw.stage_display_name(index)
    };
    let ignore_cache = lw.options.no_cache
        || info.name.as_ref().is_some_and(|name| {
            lw.options
                .no_cache_filter
                .iter()
                .any(|f| f.eq_ignore_ascii_case(name))
        });

    // The base: its root, config and (for a stage) the environment it left. An image's source op
    // is added once the step count (part of its description) is known.
    let (mut start, inherited) = match &info.base {
        StageBase::Stage(base) => {
            let mut state = lw.lower_stage(*base, Some((index, from_location)))?;
            state.base_history_len = state.config.history.len();
            (Start::Ready(state), true)
        }
        StageBase::Scratch => {
            let root = lw
                .builder
                .add(Op::source(SourceOp::Scratch), OpMetadata::default())
                .map_err(|e| lw.error(from_location, e.into()))?;
            let config = empty_image(&default_platform);
            let state = fresh_state(root, config, default_platform.clone(), None);
            (Start::Ready(state), false)
        }
        StageBase::Context(name) => {
            // A directory context as a stage's root: copied onto scratch, so that later steps
            // (and the exporter) get a root filesystem rather than a local directory.
            let local = lw.local_source(name)?;
            let copy = Op {
                inputs: vec![local],
                kind: OpKind::File(FileOp {
                    base: None,
                    actions: vec![FileAction::Copy(CopyAction::new(0, "/", "/"))],
                }),
            };
            let metadata = OpMetadata {
                description: Some(format!("[context {name}] load")),
                ..Default::default()
            };
            let root = lw.add_op(copy, metadata)?;
            let config = empty_image(&default_platform);
            let state = fresh_state(root, config, default_platform.clone(), None);
            (Start::Ready(state), false)
        }
        StageBase::Image(reference) => {
            let resolved = lw.resolve_image(reference, &default_platform, from_location)?;
            let config = base_image_config(resolved.config);
            (Start::Image(reference.clone(), config), false)
        }
    };

    // ONBUILD triggers of the base run first; they do not carry over to this stage's config. A
    // stage replaced by a named context runs nothing.
    let instructions: &[Instruction] = if info.replaced {
        &[]
    } else {
        &stage.instructions
    };
    let triggers = match &mut start {
        Start::Ready(state) => std::mem::take(&mut state.config.config.on_build),
        Start::Image(_, config) => std::mem::take(&mut config.config.on_build),
    };
    let mut trigger_instructions = Vec::new();
    for trigger in &triggers {
        let mut instruction = parser::parse_instruction(trigger, lw.dockerfile.directives.escape)
            .map_err(|error| {
            lw.error(
                from_location,
                LowerErrorKind::BadOnbuildTrigger {
                    trigger: trigger.clone(),
                    reason: error.to_string(),
                },
            )
        })?;
        instruction.location = stage.location;
        trigger_instructions.push(instruction);
    }

    let counted = |instruction: &&Instruction| {
        matches!(
            instruction.kind,
            InstructionKind::Run(_)
                | InstructionKind::Copy(_)
                | InstructionKind::Add(_)
                | InstructionKind::Workdir(_)
        )
    };
    let from_image_counted = matches!(start, Start::Image(..));
    let total = usize::from(from_image_counted)
        + trigger_instructions.iter().filter(counted).count()
        + instructions.iter().filter(counted).count();

    let state = match start {
        Start::Ready(state) => state,
        Start::Image(reference, config) => {
            let description =
                stage_description(&prefix_name, 1, total, false, &format!("FROM {reference}"));
            let (root, _) = lw.image_source(
                &reference,
                &default_platform,
                Some(description),
                from_location,
            )?;
            fresh_state(root, config, default_platform.clone(), Some(reference))
        }
    };
    let first_step = usize::from(from_image_counted);

    let mut cx = StageCx {
        lw,
        index,
        state,
        prefix_name,
        step: first_step,
        total,
        onbuild: false,
        ignore_cache,
        cmd_set: false,
    };

    cx.init_from_config(inherited);

    cx.onbuild = true;
    for instruction in &trigger_instructions {
        cx.dispatch(instruction)?;
    }
    cx.onbuild = false;
    for instruction in instructions {
        cx.dispatch(instruction)?;
    }
    Ok(cx.state)
}

/// `[name step/total] text` as BuildKit names a step's vertex (`[2/5] …` in a single-stage file).
fn stage_description(
    prefix_name: &str,
    step: usize,
    total: usize,
    onbuild: bool,
    text: &str,
) -> String {
    if total == 0 {
        return text.to_string();
    }
    let width = total.to_string().len();
    let mut out = String::from("[");
    if !prefix_name.is_empty() {
        out.push_str(prefix_name);
        out.push(' ');
    }
    out.push_str(&format!("{step:>width$}/{total}] "));
    if onbuild {
        out.push_str("ONBUILD ");
    }
    out.push_str(text);
    out
}

/// How a stage starts: ready (scratch, a context, another stage), or from an image whose source
/// op still has to be added.
// One short-lived value per stage: boxing a variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Start {
    Ready(StageState),
    Image(String, ImageConfig),
}

fn fresh_state(
    root: OpRef,
    config: ImageConfig,
    platform: Platform,
    base_image: Option<String>,
) -> StageState {
    let base_history_len = config.history.len();
    StageState {
        root,
        config,
        platform,
        env: OrderedEnv::default(),
        cwd: "/".to_string(),
        user: String::new(),
        build_args: Vec::new(),
        base_history_len,
        base_image,
    }
}

/// The config of `scratch`: the platform, `PATH` and `/` as the working directory.
fn empty_image(platform: &Platform) -> ImageConfig {
    let mut config = ImageConfig::empty(
        &platform.os,
        &platform.architecture,
        platform.variant.as_deref(),
    );
    config.config.working_dir = "/".to_string();
    if platform.os != "windows" {
        config.config.env = vec![format!("PATH={DEFAULT_PATH}")];
    }
    config
}

/// A base image's config as a new image starts from it: typed fields only (BuildKit reads the
/// base into its typed struct, so unknown fields do not carry over), no creation time, no layer
/// list (the exporter writes the layers), and our own field order.
fn base_image_config(mut config: ImageConfig) -> ImageConfig {
    config.created = None;
    config.extra.clear();
    config.config.extra.clear();
    for entry in &mut config.history {
        entry.extra.clear();
    }
    config.rootfs = RootFs::default();
    config.clear_shape();
    config
}

struct StageCx<'l, 'a> {
    lw: &'l mut Lowerer<'a>,
    index: usize,
    state: StageState,
    /// `stage-1` or the stage name; empty when the file has a single stage.
    prefix_name: String,
    step: usize,
    total: usize,
    /// Whether the instruction being dispatched is an ONBUILD trigger of the base.
    onbuild: bool,
    ignore_cache: bool,
    /// Whether this stage set CMD itself (an ENTRYPOINT then keeps it).
    cmd_set: bool,
}

impl StageCx<'_, '_> {
    fn error(&self, location: Location, kind: LowerErrorKind) -> LowerError {
        self.lw.error(Some(location), kind)
    }

    /// `[stage-1 2/5] RUN make` (the step counter advances).
    fn describe(&mut self, text: &str) -> String {
        self.step += 1;
        stage_description(&self.prefix_name, self.step, self.total, self.onbuild, text)
    }

    /// The instruction text with variables expanded for display (quotes kept, unset variables
    /// left as written) and the keyword upper-cased.
    fn display_text(&self, original: &str) -> String {
        let lexer = Lexer::new(self.lw.dockerfile.directives.escape).with_options(LexerOptions {
            raw_quotes: true,
            raw_escapes: false,
            skip_unset: true,
        });
        let text = lexer
            .process_word(original, &self.state.env)
            .map(|expansion| expansion.value)
            .unwrap_or_else(|_| original.to_string());
        match text.split_once(' ') {
            Some((keyword, rest)) => format!("{} {rest}", keyword.to_uppercase()),
            None => text.to_uppercase(),
        }
    }

    fn metadata(&self, description: String, location: Location) -> OpMetadata {
        OpMetadata {
            description: Some(description),
            location: Some(self.lw.source_location(location)),
            ignore_cache: self.ignore_cache,
        }
    }

    fn expand(&self, word: &str, location: Location) -> Result<String, LowerError> {
        self.lw
            .lexer
            .process_word(word, &self.state.env)
            .map(|expansion| expansion.value)
            .map_err(|error| self.error(location, error.into()))
    }

    fn commit(&mut self, created_by: String, empty_layer: bool) {
        let mut entry = History::new(created_by, empty_layer);
        entry.comment = HISTORY_COMMENT.to_string();
        entry.created = self.lw.epoch.clone();
        self.state.config.history.push(entry);
    }

    /// Applies the config's Env, WorkingDir and User to the state, after making sure PATH is set.
    fn init_from_config(&mut self, inherited: bool) {
        let config = &mut self.state.config;
        if self.state.platform.os != "windows" && config.config.env_get("PATH").is_none() {
            config.config.env.push(format!("PATH={DEFAULT_PATH}"));
        }
        if !inherited {
            self.state.env = OrderedEnv::default();
        }
        for (key, value) in config.config.env_pairs() {
            self.state.env.set(key, value);
        }
        if !config.config.working_dir.is_empty() {
            self.state.cwd = names::normalize_workdir("/", &config.config.working_dir);
            config.config.working_dir = self.state.cwd.clone();
        }
        if !config.config.user.is_empty() {
            self.state.user = config.config.user.clone();
        }
    }

    fn dispatch(&mut self, instruction: &Instruction) -> Result<(), LowerError> {
        let at = instruction.location;
        match &instruction.kind {
            InstructionKind::Run(run) => self.run(run, instruction),
            InstructionKind::Copy(copy) => self.copy(copy, false, instruction),
            InstructionKind::Add(copy) => self.copy(copy, true, instruction),
            InstructionKind::Workdir(path) => self.workdir(path, instruction),
            InstructionKind::Env(pairs) => {
                let pairs = self.expand_pairs(pairs, at)?;
                let mut message = String::from("ENV");
                for (key, value) in &pairs {
                    self.state.env.set(key, value);
                    self.state.config.config.env_set(key, value);
                    message.push_str(&format!(" {key}={value}"));
                }
                self.commit(message, true);
                Ok(())
            }
            InstructionKind::Label(pairs) => {
                let pairs = self.expand_pairs(pairs, at)?;
                let mut message = String::from("LABEL");
                for (key, value) in pairs {
                    message.push_str(&format!(" {key}={value}"));
                    self.state.config.config.labels.insert(key, value);
                }
                self.commit(message, true);
                Ok(())
            }
            InstructionKind::Maintainer(name) => {
                self.state.config.author = name.clone();
                self.commit(format!("MAINTAINER {name}"), true);
                Ok(())
            }
            InstructionKind::Cmd(form) => {
                let args = self.command_args(form);
                self.commit(format!("CMD {}", names::go_quoted_list(&args)), true);
                let config = &mut self.state.config.config;
                config.cmd = Some(args);
                config.args_escaped = true;
                self.cmd_set = true;
                Ok(())
            }
            InstructionKind::Entrypoint(form) => {
                let args = self.command_args(form);
                self.commit(format!("ENTRYPOINT {}", names::go_quoted_list(&args)), true);
                let config = &mut self.state.config.config;
                config.entrypoint = Some(args);
                // An ENTRYPOINT resets a CMD that this stage did not set itself.
                if !self.cmd_set {
                    config.cmd = None;
                }
                Ok(())
            }
            InstructionKind::Expose(specs) => {
                let mut ports = Vec::new();
                for spec in specs {
                    let words = self
                        .lw
                        .lexer
                        .process_words(spec, &self.state.env)
                        .map_err(|error| self.error(at, error.into()))?
                        .words;
                    for word in words {
                        let parsed = names::parse_port_spec(&word)
                            .map_err(|reason| self.error(at, LowerErrorKind::BadExpose(reason)))?;
                        ports.extend(parsed);
                    }
                }
                for port in &ports {
                    self.state
                        .config
                        .config
                        .exposed_ports
                        .insert(port.clone(), Default::default());
                }
                self.commit(format!("EXPOSE {}", names::go_plain_list(&ports)), true);
                Ok(())
            }
            InstructionKind::Volume(volumes) => {
                let mut expanded = Vec::new();
                for volume in volumes {
                    let value = self.expand(volume, at)?;
                    if value.is_empty() {
                        return Err(self.error(at, LowerErrorKind::EmptyVolume));
                    }
                    self.state
                        .config
                        .config
                        .volumes
                        .insert(value.clone(), Default::default());
                    expanded.push(value);
                }
                self.commit(format!("VOLUME {}", names::go_plain_list(&expanded)), true);
                Ok(())
            }
            InstructionKind::User(user) => {
                let user = self.expand(user, at)?;
                self.state.user = user.clone();
                self.state.config.config.user = user.clone();
                self.commit(format!("USER {user}"), true);
                Ok(())
            }
            InstructionKind::StopSignal(signal) => {
                let signal = self.expand(signal, at)?;
                if !names::valid_signal(&signal) {
                    return Err(self.error(at, LowerErrorKind::BadStopSignal(signal)));
                }
                self.state.config.config.stop_signal = signal.clone();
                self.commit(format!("STOPSIGNAL {signal}"), true);
                Ok(())
            }
            InstructionKind::Shell(shell) => {
                self.state.config.config.shell = Some(shell.clone());
                self.commit(format!("SHELL {}", names::go_plain_list(shell)), true);
                Ok(())
            }
            InstructionKind::Onbuild(onbuild) => {
                self.state
                    .config
                    .config
                    .on_build
                    .push(onbuild.trigger.clone());
                Ok(())
            }
            InstructionKind::Healthcheck(healthcheck) => {
                self.healthcheck(healthcheck);
                Ok(())
            }
            InstructionKind::Arg(arg) => self.arg(arg),
        }
    }

    fn expand_pairs(
        &self,
        pairs: &[KeyValue],
        at: Location,
    ) -> Result<Vec<(String, String)>, LowerError> {
        // All pairs expand against the environment from before the instruction
        // (`ENV A=1 B=$A` sees the old A), as in Docker.
        pairs
            .iter()
            .map(|pair| Ok((self.expand(&pair.key, at)?, self.expand(&pair.value, at)?)))
            .collect()
    }

    /// The SHELL in effect (or the platform's default shell).
    fn shell(&self) -> Vec<String> {
        match &self.state.config.config.shell {
            Some(shell) if !shell.is_empty() => shell.clone(),
            _ if self.state.platform.os == "windows" => {
                vec!["cmd".to_string(), "/S".to_string(), "/C".to_string()]
            }
            _ => vec!["/bin/sh".to_string(), "-c".to_string()],
        }
    }

    fn command_args(&self, form: &CommandForm) -> Vec<String> {
        match form {
            CommandForm::Exec(args) => args.clone(),
            CommandForm::Shell(command) => {
                let mut args = self.shell();
                args.push(command.clone());
                args
            }
        }
    }

    fn healthcheck(&mut self, healthcheck: &Healthcheck) {
        let nanos = |d: Option<std::time::Duration>| {
            d.map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        };
        let config = match healthcheck {
            Healthcheck::None => ConfigHealthcheck {
                test: vec!["NONE".to_string()],
                ..Default::default()
            },
            Healthcheck::Cmd {
                command,
                interval,
                timeout,
                start_period,
                start_interval,
                retries,
            } => ConfigHealthcheck {
                test: match command {
                    CommandForm::Shell(command) => vec!["CMD-SHELL".to_string(), command.clone()],
                    CommandForm::Exec(args) => {
                        let mut test = vec!["CMD".to_string()];
                        test.extend(args.iter().cloned());
                        test
                    }
                },
                interval: nanos(*interval),
                timeout: nanos(*timeout),
                start_period: nanos(*start_period),
                start_interval: nanos(*start_interval),
                retries: i64::from(retries.unwrap_or(0)),
            },
        };
        let duration =
            |ns: i64| names::go_duration(std::time::Duration::from_nanos(ns.max(0) as u64));
        // Go's `%+v` of BuildKit's HealthcheckConfig.
        let message = format!(
            "HEALTHCHECK {{Test:{} Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
            names::go_plain_list(&config.test),
            duration(config.interval),
            duration(config.timeout),
            duration(config.start_period),
            duration(config.start_interval),
            config.retries
        );
        self.state.config.config.healthcheck = Some(config);
        self.commit(message, true);
    }

    fn arg(&mut self, arg: &ArgInstruction) -> Result<(), LowerError> {
        let mut parts = Vec::new();
        for decl in &arg.args {
            if decl.name.is_empty() {
                return Err(self.error(arg.location, LowerErrorKind::EmptyArgName));
            }
            self.lw.declared_args.insert(decl.name.clone());
            let value = match (self.lw.options.build_args.get(&decl.name), &decl.default) {
                (Some(value), _) => Some(value.clone()),
                (None, Some(default)) => Some(self.expand(default, arg.location)?),
                // A bare `ARG NAME` takes the meta ARG (or predefined ARG) of that name.
                (None, None) => self.lw.global_args.lookup(&decl.name).map(str::to_string),
            };
            if let Some(value) = &value {
                self.state.env.set(&decl.name, value);
            }
            parts.push(match &value {
                Some(value) => format!("{}={value}", decl.name),
                None => decl.name.clone(),
            });
            self.state.build_args.push((decl.name.clone(), value));
        }
        self.commit(format!("ARG {}", parts.join(" ")), true);
        Ok(())
    }

    /// `|2 A=1 B=2 ` before a RUN's command in its history entry, for the ARGs in scope.
    fn run_command_string(&self, args: &[String]) -> String {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for (key, value) in &self.state.build_args {
            let value = self
                .state
                .env
                .lookup(key)
                .map(str::to_string)
                .unwrap_or_else(|| value.clone().unwrap_or_default());
            match pairs.iter_mut().find(|(existing, _)| existing == key) {
                Some(pair) => pair.1 = value,
                None => pairs.push((key.clone(), value)),
            }
        }
        let mut words = Vec::new();
        if !pairs.is_empty() {
            words.push(format!("|{}", pairs.len()));
            words.extend(pairs.into_iter().map(|(k, v)| format!("{k}={v}")));
        }
        words.extend(args.iter().cloned());
        words.join(" ")
    }

    fn workdir(&mut self, path: &str, instruction: &Instruction) -> Result<(), LowerError> {
        let at = instruction.location;
        let requested = self.expand(path, at)?;
        if requested.is_empty() {
            return Err(self.error(at, LowerErrorKind::EmptyWorkdir));
        }
        let workdir = names::normalize_workdir(&self.state.config.config.working_dir, &requested);
        self.state.config.config.working_dir = workdir.clone();
        self.state.cwd = workdir.clone();
        let with_layer = workdir != "/";
        if with_layer {
            let owner = if self.state.user.is_empty() {
                None
            } else {
                Some(
                    names::parse_chown(&self.state.user)
                        .map_err(|reason| self.error(at, LowerErrorKind::BadChown(reason)))?,
                )
            };
            let text = self.display_text(&instruction.original);
            let description = self.describe(&text);
            let op = Op {
                inputs: vec![self.state.root.clone()],
                kind: OpKind::File(FileOp {
                    base: Some(0),
                    actions: vec![FileAction::Mkdir(MkdirAction {
                        path: workdir.clone(),
                        mode: 0o755,
                        make_parents: true,
                        owner,
                    })],
                }),
            };
            let metadata = self.metadata(description, at);
            self.state.root = self.lw.add_op(op, metadata)?;
        }
        self.commit(format!("WORKDIR {workdir}"), !with_layer);
        Ok(())
    }

    /// Where `--from` (or `--mount from=`) points: a stage's root, a named context or an image.
    fn source_for_from(&mut self, value: &str, at: Location) -> Result<OpRef, LowerError> {
        // Variables are not expanded in --from (BuildKit refuses them).
        let unexpanded = self
            .lw
            .lexer
            .process_word(value, &OrderedEnv::default())
            .map_err(|error| self.error(at, error.into()))?;
        if unexpanded.value != value {
            return Err(self.error(
                at,
                LowerErrorKind::FromExpansion {
                    value: value.to_string(),
                },
            ));
        }
        if let Ok(index) = value.parse::<usize>() {
            let count = self.lw.dockerfile.stages.len();
            if index >= count {
                return Err(self.error(at, LowerErrorKind::InvalidStageIndex { index, count }));
            }
            return Ok(self
                .lw
                .lower_stage(index, Some((self.index, Some(at))))?
                .root);
        }
        if let Some(index) = self.lw.stage_by_reference(value) {
            // A stage replaced by a directory context is read from the directory itself, so
            // that a step is keyed by just the paths it takes from it.
            if let Some(info) = self.lw.stages.get(index).filter(|info| info.replaced) {
                if let StageBase::Context(name) = &info.base {
                    let name = name.clone();
                    return self.lw.local_source(&name);
                }
            }
            return Ok(self
                .lw
                .lower_stage(index, Some((self.index, Some(at))))?
                .root);
        }
        let reference = match self.lw.named_context(value) {
            Some((key, NamedContext::Local)) => {
                let key = key.to_string();
                return self.lw.local_source(&key);
            }
            Some((_, NamedContext::Image(reference))) if reference == "scratch" => {
                return self
                    .lw
                    .builder
                    .add(Op::source(SourceOp::Scratch), OpMetadata::default())
                    .map_err(|e| self.error(at, e.into()));
            }
            Some((_, NamedContext::Image(reference))) => reference.clone(),
            None => value.to_string(),
        };
        let normalized = self.lw.normalize(&reference, Some(at))?;
        let platform = self.state.platform.clone();
        Ok(self
            .lw
            .image_source(&normalized, &platform, None, Some(at))?
            .0)
    }

    fn copy(
        &mut self,
        copy: &CopyInstruction,
        is_add: bool,
        instruction: &Instruction,
    ) -> Result<(), LowerError> {
        let at = instruction.location;
        let keyword = if is_add { "ADD" } else { "COPY" };
        let dest_raw = self.expand(&copy.dest, at)?;
        let dest = names::dest_relative_to_workdir(&self.state.cwd, &dest_raw);
        let chown_raw = match &copy.chown {
            Some(chown) => Some(self.expand(chown, at)?),
            None => None,
        };
        let chown = match &chown_raw {
            Some(raw) => Some(
                names::parse_chown(raw)
                    .map_err(|reason| self.error(at, LowerErrorKind::BadChown(reason)))?,
            ),
            None => None,
        };
        let chmod_raw = match &copy.chmod {
            Some(chmod) => Some(self.expand(chmod, at)?),
            None => None,
        };
        let chmod = match &chmod_raw {
            Some(raw) => Some(
                names::parse_chmod(raw)
                    .map_err(|reason| self.error(at, LowerErrorKind::BadChmod(reason)))?,
            ),
            None => None,
        };
        let excludes = copy
            .excludes
            .iter()
            .map(|pattern| self.expand(pattern, at))
            .collect::<Result<Vec<_>, _>>()?;
        let checksum = match &copy.checksum {
            Some(checksum) => Some(self.expand(checksum, at)?),
            None => None,
        };

        // Split the sources into heredocs and paths/URLs.
        let mut paths = Vec::new();
        let mut heredocs = Vec::new();
        for source in &copy.sources {
            match parser::parse_heredoc_word(source) {
                Ok(Some(word)) => {
                    let body = copy
                        .heredocs
                        .iter()
                        .find(|heredoc| heredoc.name == word.name)
                        .ok_or_else(|| {
                            self.error(at, LowerErrorKind::MissingHeredoc(word.name.clone()))
                        })?;
                    heredocs.push(body.clone());
                }
                _ => paths.push(self.expand(source, at)?),
            }
        }
        if let Some(checksum) = &checksum {
            let valid = checksum
                .strip_prefix("sha256:")
                .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
            if !valid {
                return Err(self.error(
                    at,
                    LowerErrorKind::BadChecksum(format!("{checksum:?} is not sha256:<64 hex>")),
                ));
            }
            if paths.len() != 1
                || !heredocs.is_empty()
                || !(is_http_url(&paths[0]) || git_url(&paths[0]).is_some())
            {
                return Err(self.error(
                    at,
                    LowerErrorKind::BadChecksum(
                        "checksum requires exactly one HTTP(S) or Git source".to_string(),
                    ),
                ));
            }
        }

        let mut message = String::from(keyword);
        if copy.parents {
            message.push_str(" --parents");
        }
        if let Some(chown) = &chown_raw {
            message.push_str(&format!(" --chown={chown}"));
        }
        if let Some(chmod) = &chmod_raw {
            message.push_str(&format!(" --chmod={chmod}"));
        }

        let context_source = match &copy.from {
            Some(from) => self.source_for_from(from, at)?,
            None => self.lw.context_source()?,
        };
        let link = copy.link && chmod.is_none();
        // With --link the files land on an empty layer that is merged on top of the root.
        let mut inputs: Vec<OpRef> = if link {
            Vec::new()
        } else {
            vec![self.state.root.clone()]
        };
        let text = self.display_text(&instruction.original);
        let description = self.describe(&text);
        let mut actions = Vec::new();
        for src in &paths {
            message.push(' ');
            message.push_str(src);
            let mut action = if let Some(git) = git_url(src) {
                if !is_add {
                    return Err(self.error(at, LowerErrorKind::GitInCopy(src.clone())));
                }
                if checksum.is_some() {
                    return Err(self.error(
                        at,
                        LowerErrorKind::BadChecksum(
                            "checksums of Git sources are not supported yet".to_string(),
                        ),
                    ));
                }
                let keep_git_dir = copy.keep_git_dir || git.keep_git_dir.unwrap_or(false);
                let git = self.lw.add_op(
                    Op::source(SourceOp::Git {
                        url: git.url,
                        reference: git.reference,
                        subdir: git.subdir,
                        keep_git_dir,
                    }),
                    self.metadata(description.clone(), at),
                )?;
                let mut action =
                    CopyAction::new(input_position(&mut inputs, git), "/", dest.clone());
                action.follow_symlinks = false;
                action.allow_wildcard = false;
                action
            } else if is_http_url(src) {
                if !is_add {
                    return Err(self.error(at, LowerErrorKind::UrlInCopy(src.clone())));
                }
                let filename = url_filename(src);
                let http = self.lw.add_op(
                    Op::source(SourceOp::Http {
                        url: src.clone(),
                        checksum: checksum.clone(),
                        filename: Some(filename.clone()),
                    }),
                    self.metadata(description.clone(), at),
                )?;
                let mut action =
                    CopyAction::new(input_position(&mut inputs, http), filename, dest.clone());
                action.follow_symlinks = false;
                action.allow_wildcard = false;
                action.dir_copy_contents = false;
                // Remote archives are not unpacked unless asked.
                action.attempt_unpack = copy.unpack.unwrap_or(false);
                action
            } else {
                let (src_path, include) = if copy.parents {
                    match src.split_once("/./") {
                        Some((parent, pattern)) => (parent.to_string(), pattern.to_string()),
                        None => ("/".to_string(), src.clone()),
                    }
                } else {
                    (src.clone(), String::new())
                };
                let index = input_position(&mut inputs, context_source.clone());
                let mut action = CopyAction::new(
                    index,
                    names::clean_path(&format!("/{src_path}")),
                    dest.clone(),
                );
                if copy.parents {
                    let pattern = names::clean_path(&format!("/{include}"));
                    action.include_patterns = vec![pattern.trim_start_matches('/').to_string()];
                    action.parents = true;
                }
                action.allow_empty_wildcard = true;
                action.attempt_unpack = is_add && copy.unpack.unwrap_or(true);
                action
            };
            action.chown = chown.clone();
            action.chmod = chmod.clone();
            action.exclude_patterns = excludes.clone();
            actions.push(FileAction::Copy(action));
        }
        for heredoc in &heredocs {
            message.push_str(&format!(" <<{}", heredoc.name));
            let mut data = if heredoc.chomp {
                parser::chomp_heredoc_content(&heredoc.content)
            } else {
                heredoc.content.clone()
            };
            if heredoc.expand {
                let lexer = Lexer::new('\\').with_options(LexerOptions {
                    raw_quotes: true,
                    raw_escapes: true,
                    skip_unset: false,
                });
                data = lexer
                    .process_word(&data, &self.state.env)
                    .map_err(|error| self.error(at, error.into()))?
                    .value;
            }
            let path = format!("/{}", heredoc.name.trim_start_matches('/'));
            let document = self.lw.add_op(
                Op {
                    inputs: Vec::new(),
                    kind: OpKind::File(FileOp {
                        base: None,
                        actions: vec![FileAction::Mkfile(MkfileAction {
                            path: path.clone(),
                            data,
                            mode: 0o644,
                            owner: None,
                        })],
                    }),
                },
                OpMetadata {
                    description: Some("[internal] preparing inline document".to_string()),
                    ..Default::default()
                },
            )?;
            let mut action =
                CopyAction::new(input_position(&mut inputs, document), path, dest.clone());
            action.follow_symlinks = false;
            action.allow_wildcard = false;
            action.dir_copy_contents = false;
            action.chown = chown.clone();
            action.chmod = chmod.clone();
            actions.push(FileAction::Copy(action));
        }
        message.push(' ');
        message.push_str(&dest_raw);

        let file_op = Op {
            inputs,
            kind: OpKind::File(FileOp {
                base: if link { None } else { Some(0) },
                actions,
            }),
        };
        let metadata = self.metadata(description.clone(), at);
        let copied = self.lw.add_op(file_op, metadata)?;
        self.state.root = if link {
            let merge = Op {
                inputs: vec![self.state.root.clone(), copied],
                kind: OpKind::Merge(MergeOp {}),
            };
            let metadata = self.metadata(description.replacen("] ", "] LINK ", 1), at);
            self.lw.add_op(merge, metadata)?
        } else {
            copied
        };
        self.commit(format!("{message} # buildkit"), false);
        Ok(())
    }

    fn run(&mut self, run: &RunInstruction, instruction: &Instruction) -> Result<(), LowerError> {
        let at = instruction.location;
        let mut text = self.display_text(&instruction.original);
        let mut inputs = vec![self.state.root.clone()];
        let mut mounts = vec![LlbMount {
            target: "/".to_string(),
            input: Some(0),
            selector: None,
            readonly: false,
            output: Some(0),
            kind: LlbMountKind::Bind,
        }];
        let args = match &run.command {
            CommandForm::Exec(args) => args.clone(),
            CommandForm::Shell(command) if run.heredocs.is_empty() => {
                self.command_args(&CommandForm::Shell(command.clone()))
            }
            CommandForm::Shell(command) => {
                let single = matches!(parser::parse_heredoc_word(command.trim()), Ok(Some(_)))
                    && run.heredocs.len() == 1;
                let script = if single {
                    let heredoc = &run.heredocs[0];
                    let data = if heredoc.chomp {
                        parser::chomp_heredoc_content(&heredoc.content)
                    } else {
                        heredoc.content.clone()
                    };
                    text.push_str(&format!(" ({})", summarize_heredoc(&heredoc.content)));
                    if self.state.platform.os != "windows" && data.starts_with("#!") {
                        // A script with its own interpreter: written to a file and executed.
                        let path = format!("/{}", heredoc.name.trim_start_matches('/'));
                        let document = self.lw.add_op(
                            Op {
                                inputs: Vec::new(),
                                kind: OpKind::File(FileOp {
                                    base: None,
                                    actions: vec![FileAction::Mkfile(MkfileAction {
                                        path: path.clone(),
                                        data,
                                        mode: 0o755,
                                        owner: None,
                                    })],
                                }),
                            },
                            OpMetadata {
                                description: Some(
                                    "[internal] preparing inline document".to_string(),
                                ),
                                ..Default::default()
                            },
                        )?;
                        inputs.push(document);
                        mounts.push(LlbMount {
                            target: "/dev/pipes/".to_string(),
                            input: Some((inputs.len() - 1) as u32),
                            selector: Some("/".to_string()),
                            readonly: true,
                            output: None,
                            kind: LlbMountKind::Bind,
                        });
                        format!("/dev/pipes{path}")
                    } else {
                        data
                    }
                } else {
                    // Several heredocs or a command around one: hand the shell a real heredoc.
                    let mut script = command.clone();
                    for heredoc in &run.heredocs {
                        script.push('\n');
                        script.push_str(&heredoc.content);
                        script.push_str(&heredoc.name);
                    }
                    script
                };
                self.command_args(&CommandForm::Shell(script))
            }
        };

        let network = match run.network.as_deref() {
            None | Some("default") => self.lw.options.network,
            Some("none") => NetworkMode::None,
            Some("host") => NetworkMode::Host,
            Some(other) => {
                return Err(self.error(at, LowerErrorKind::BadNetwork(other.to_string())));
            }
        };
        let security = match run.security.as_deref() {
            None | Some("sandbox") => SecurityMode::Sandbox,
            Some("insecure") => SecurityMode::Insecure,
            Some(other) => {
                return Err(self.error(at, LowerErrorKind::BadSecurity(other.to_string())));
            }
        };

        let mut secret_env = Vec::new();
        let mut ssh_count = 0;
        for raw in &run.mounts {
            // Values are expanded with quotes kept so the CSV quoting still splits fields.
            let lexer =
                Lexer::new(self.lw.dockerfile.directives.escape).with_options(LexerOptions {
                    raw_quotes: true,
                    raw_escapes: true,
                    skip_unset: false,
                });
            let expanded = lexer
                .process_word(raw, &self.state.env)
                .map_err(|error| self.error(at, error.into()))?
                .value;
            let mount = crate::instructions::parse_mount(&expanded)
                .map_err(|error| self.error(at, LowerErrorKind::BadMount(error.to_string())))?;
            // A relative (or missing) target is under the working directory, as in BuildKit;
            // mounting over the root itself is refused.
            let target = match (&mount.target, mount.kind) {
                (None, MountKind::Secret | MountKind::Ssh) => None,
                (target, _) => {
                    let target = target.as_deref().unwrap_or_default();
                    let absolute = if target.starts_with('/') {
                        names::clean_path(target)
                    } else {
                        names::clean_path(&format!("{}/{target}", self.state.cwd))
                    };
                    if absolute == "/" {
                        return Err(self.error(
                            at,
                            LowerErrorKind::BadMount(format!(
                                "invalid mount target {absolute:?} for a {} mount",
                                mount.kind.as_str()
                            )),
                        ));
                    }
                    Some(absolute)
                }
            };
            let selector = mount
                .source
                .as_deref()
                .map(|source| names::clean_path(&format!("/{source}")))
                .filter(|source| source != "/");
            match mount.kind {
                MountKind::Bind => {
                    let source = match &mount.from {
                        Some(from) => self.source_for_from(from, at)?,
                        None => self.lw.context_source()?,
                    };
                    mounts.push(LlbMount {
                        target: target.unwrap_or_default(),
                        input: Some(input_position(&mut inputs, source)),
                        selector,
                        readonly: mount.read_only,
                        output: None,
                        kind: LlbMountKind::Bind,
                    });
                }
                MountKind::Cache => {
                    let target = target.unwrap_or_default();
                    let input = match &mount.from {
                        Some(from) => {
                            Some(input_position(&mut inputs, self.source_for_from(from, at)?))
                        }
                        None => None,
                    };
                    mounts.push(LlbMount {
                        target: target.clone(),
                        input,
                        selector: if input.is_some() { selector } else { None },
                        readonly: mount.read_only,
                        output: None,
                        kind: LlbMountKind::Cache {
                            id: mount.id.clone().unwrap_or(target),
                            sharing: match mount.sharing.unwrap_or(CacheSharing::Shared) {
                                CacheSharing::Shared => LlbCacheSharing::Shared,
                                CacheSharing::Private => LlbCacheSharing::Private,
                                CacheSharing::Locked => LlbCacheSharing::Locked,
                            },
                            uid: mount.uid.unwrap_or(0),
                            gid: mount.gid.unwrap_or(0),
                            mode: mount.mode.unwrap_or(0o755),
                        },
                    });
                }
                MountKind::Tmpfs => mounts.push(LlbMount {
                    target: target.unwrap_or_default(),
                    input: None,
                    selector: None,
                    readonly: false,
                    output: None,
                    kind: LlbMountKind::Tmpfs { size: mount.size },
                }),
                MountKind::Secret => {
                    let id = mount.id.clone().unwrap_or_default();
                    if let Some(name) = &mount.env {
                        secret_env.push(SecretEnv {
                            name: name.clone(),
                            id: id.clone(),
                            required: mount.required,
                        });
                    }
                    if let Some(target) = target {
                        mounts.push(LlbMount {
                            target,
                            input: None,
                            selector: None,
                            readonly: true,
                            output: None,
                            kind: LlbMountKind::Secret {
                                id,
                                required: mount.required,
                                uid: mount.uid.unwrap_or(0),
                                gid: mount.gid.unwrap_or(0),
                                mode: mount.mode.unwrap_or(0o400),
                            },
                        });
                    }
                }
                MountKind::Ssh => {
                    let target =
                        target.unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{ssh_count}"));
                    ssh_count += 1;
                    mounts.push(LlbMount {
                        target,
                        input: None,
                        selector: None,
                        readonly: true,
                        output: None,
                        kind: LlbMountKind::Ssh {
                            id: mount.id.clone().unwrap_or_else(|| "default".to_string()),
                            required: mount.required,
                            uid: mount.uid.unwrap_or(0),
                            gid: mount.gid.unwrap_or(0),
                            mode: mount.mode.unwrap_or(0o600),
                        },
                    });
                }
            }
        }

        let proxy_env = self.proxy_env();
        let description = self.describe(&text);
        let exec = ExecOp {
            args: args.clone(),
            env: self.state.env.to_entries(),
            cwd: self.state.cwd.clone(),
            user: self.state.user.clone(),
            network,
            security,
            mounts,
            secret_env,
            proxy_env,
        };
        let metadata = self.metadata(description, at);
        self.state.root = self.lw.add_op(
            Op {
                inputs,
                kind: OpKind::Exec(exec),
            },
            metadata,
        )?;
        let command = self.run_command_string(&args);
        self.commit(format!("RUN {command} # buildkit"), false);
        Ok(())
    }

    /// Proxy build args, passed to every RUN in both spellings without being declared.
    fn proxy_env(&self) -> Vec<String> {
        let mut env = Vec::new();
        for (key, value) in &self.lw.options.build_args {
            if let Some(proxy) = proxy_arg(key) {
                env.push(format!("{proxy}={value}"));
                env.push(format!("{}={value}", proxy.to_lowercase()));
            }
        }
        env
    }
}

/// The position of `op` in `inputs`, appending it when new.
fn input_position(inputs: &mut Vec<OpRef>, op: OpRef) -> u32 {
    let position = match inputs.iter().position(|existing| *existing == op) {
        Some(position) => position,
        None => {
            inputs.push(op);
            inputs.len() - 1
        }
    };
    u32::try_from(position).unwrap_or(u32::MAX)
}

fn is_http_url(src: &str) -> bool {
    (src.starts_with("http://") || src.starts_with("https://")) && git_url(src).is_none()
}

/// A Git source named by an ADD source.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GitSource {
    url: String,
    reference: Option<String>,
    subdir: Option<String>,
    keep_git_dir: Option<bool>,
}

/// The Git source `src` names, if it is one: `git@…`, `git://…`, `ssh://…`, or an http(s) URL
/// whose path ends in `.git`. The ref and sub-directory come from `#ref:subdir` or from the query
/// form (`?ref=v1&subdir=docs&keep-git-dir=1`; `tag=`, `branch=` and `commit=` also name the ref).
fn git_url(src: &str) -> Option<GitSource> {
    let (without_fragment, fragment) = match src.split_once('#') {
        Some((url, fragment)) => (url, Some(fragment)),
        None => (src, None),
    };
    let (url, query) = match without_fragment.split_once('?') {
        Some((url, query)) => (url, Some(query)),
        None => (without_fragment, None),
    };
    let is_git = src.starts_with("git@")
        || src.starts_with("git://")
        || src.starts_with("ssh://")
        || ((src.starts_with("http://") || src.starts_with("https://")) && url.ends_with(".git"));
    if !is_git {
        return None;
    }
    let mut git = GitSource {
        url: url.to_string(),
        reference: None,
        subdir: None,
        keep_git_dir: None,
    };
    if let Some(fragment) = fragment {
        let (reference, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
        git.reference = Some(reference.to_string()).filter(|r| !r.is_empty());
        git.subdir = Some(subdir.to_string()).filter(|s| !s.is_empty());
    }
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "ref" | "tag" | "branch" | "commit" => git.reference = Some(value.to_string()),
            "subdir" => git.subdir = Some(value.to_string()),
            "keep-git-dir" => {
                git.keep_git_dir = Some(matches!(value, "1" | "true" | "t" | "TRUE" | "True"))
            }
            // Other parameters (checksum=, submodules=) do not change what is fetched here.
            _ => {}
        }
    }
    Some(git)
}

/// The file name an ADD of `url` gets: the last path segment, or `__unnamed__`.
fn url_filename(url: &str) -> String {
    let without_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = without_scheme.split(['?', '#']).next().unwrap_or_default();
    let path = path.split_once('/').map_or("", |(_, path)| path);
    match path.trim_end_matches('/').rsplit('/').next() {
        Some(name) if !name.is_empty() && name != "." => name.to_string(),
        _ => "__unnamed__".to_string(),
    }
}

/// The first line of a heredoc, with `...` when there are more.
fn summarize_heredoc(content: &str) -> String {
    let trimmed = content.trim();
    let mut lines = trimmed.lines();
    let first = lines.next().unwrap_or_default().to_string();
    if lines.next().is_some() {
        format!("{first}...")
    } else {
        first
    }
}

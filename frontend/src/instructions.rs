//! Typed Dockerfile instructions: what the parser produces and lowering consumes.
//!
//! Words are kept as written (unexpanded): variables are expanded during lowering, with the ARG/ENV
//! environment in effect at that step, because that environment depends on the stage, the build args
//! and the base image. Flags whose values may hold variables (`--mount`, `--chown`, `--from`, …) are
//! likewise kept as strings; `RUN --mount` values are parsed by [`parse_mount`] after expansion.

use std::time::Duration;

/// Where an instruction sits in its file: 1-based, inclusive line numbers (a continued instruction
/// and its heredoc bodies span several lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Location {
    pub start_line: usize,
    pub end_line: usize,
}

/// A whole parsed Dockerfile.
#[derive(Debug, Clone, PartialEq)]
pub struct Dockerfile {
    pub directives: Directives,
    /// ARGs declared before the first FROM: usable in FROM lines, and in a stage that re-declares them.
    pub meta_args: Vec<ArgInstruction>,
    pub stages: Vec<Stage>,
    /// Non-fatal findings (empty continuation lines, …), reported to the user as warnings.
    pub warnings: Vec<Warning>,
}

/// Parser directives from the top of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directives {
    pub syntax: Option<String>,
    /// `\` by default, or `` ` ``.
    pub escape: char,
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            syntax: None,
            escape: '\\',
            check: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub location: Location,
    pub message: String,
}

/// One `FROM` and the instructions up to the next.
#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub from: FromInstruction,
    pub location: Location,
    pub instructions: Vec<Instruction>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    pub kind: InstructionKind,
    pub location: Location,
    /// The instruction's source text with continuations joined (no heredoc bodies), as Docker shows
    /// it in history entries and progress output, e.g. `RUN make all`.
    pub original: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum InstructionKind {
    Run(RunInstruction),
    Cmd(CommandForm),
    Entrypoint(CommandForm),
    /// `LABEL k=v ...`: keys and values unexpanded, quotes still in place.
    Label(Vec<KeyValue>),
    Maintainer(String),
    /// Port specs as written (`80`, `53/udp`, `$PORT`).
    Expose(Vec<String>),
    Env(Vec<KeyValue>),
    Add(CopyInstruction),
    Copy(CopyInstruction),
    Volume(Vec<String>),
    User(String),
    Workdir(String),
    Arg(ArgInstruction),
    Onbuild(OnbuildInstruction),
    StopSignal(String),
    Healthcheck(Healthcheck),
    Shell(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromInstruction {
    /// The image word as written (`golang:${GO_VERSION}`, `scratch`, a stage name).
    pub image: String,
    /// `AS name`, lower-cased as Docker does.
    pub name: Option<String>,
    /// `--platform=...`, unexpanded.
    pub platform: Option<String>,
}

/// The shell form (one string, run with the SHELL in effect) or the exec (JSON) form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandForm {
    Shell(String),
    Exec(Vec<String>),
}

/// A heredoc attached to RUN, COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter with quotes removed.
    pub name: String,
    /// The body as written (lines with their `\n`), before tab stripping and expansion.
    pub content: String,
    /// False when any part of the delimiter was quoted: the body is then not expanded.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from the body's lines when it is used.
    pub chomp: bool,
    /// The file descriptor written before `<<` (`3<<EOF`), if any.
    pub fd: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunInstruction {
    pub command: CommandForm,
    pub heredocs: Vec<Heredoc>,
    /// Raw `--mount=` values, unexpanded; see [`parse_mount`].
    pub mounts: Vec<String>,
    /// `--network=default|none|host`, unexpanded.
    pub network: Option<String>,
    /// `--security=insecure|sandbox`.
    pub security: Option<String>,
}

/// COPY and ADD share their shape; some flags belong to one of them only (the parser rejects the
/// others).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyInstruction {
    /// Source words as written (wildcards, `<<EOF` heredoc references, URLs for ADD).
    pub sources: Vec<String>,
    pub dest: String,
    pub heredocs: Vec<Heredoc>,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub excludes: Vec<String>,
    pub parents: bool,
    /// ADD only: `--checksum=sha256:...`.
    pub checksum: Option<String>,
    /// ADD only: `--keep-git-dir[=bool]`.
    pub keep_git_dir: bool,
    /// ADD only: `--unpack[=bool]`; `None` means Docker's default (local archives are unpacked,
    /// remote ones are not).
    pub unpack: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// One `ARG` line; it may declare several names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgInstruction {
    pub args: Vec<ArgDecl>,
    pub location: Location,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDecl {
    pub name: String,
    /// The default as written (unexpanded, quotes in place), if any.
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OnbuildInstruction {
    /// The trigger text as Docker stores it in the image config's `OnBuild` list (everything after
    /// `ONBUILD `, continuations joined).
    pub trigger: String,
    /// The trigger parsed as an instruction (never ONBUILD, FROM or MAINTAINER).
    pub instruction: Box<Instruction>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disables a healthcheck inherited from the base image.
    None,
    Cmd {
        command: CommandForm,
        interval: Option<Duration>,
        timeout: Option<Duration>,
        start_period: Option<Duration>,
        start_interval: Option<Duration>,
        retries: Option<u32>,
    },
}

/// A parsed `RUN --mount=` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub kind: MountKind,
    /// Where it appears in the sandbox (for secrets and ssh a default applies when unset).
    pub target: Option<String>,
    /// `source=` path inside the `from` (or the context).
    pub source: Option<String>,
    /// `from=`: a stage name or index, an image, or a named build context.
    pub from: Option<String>,
    pub read_only: bool,
    /// cache: `id=`; secret and ssh: `id=`.
    pub id: Option<String>,
    pub sharing: Option<CacheSharing>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// File mode, e.g. 0o755 for cache mounts, 0o400 for secrets.
    pub mode: Option<u32>,
    /// tmpfs: `size=` in bytes.
    pub size: Option<u64>,
    /// secret and ssh: `required=`.
    pub required: bool,
    /// secret: `env=` exposes it as an environment variable instead of (or besides) a file.
    pub env: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountKind {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheSharing {
    Shared,
    Private,
    Locked,
}

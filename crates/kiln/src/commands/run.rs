//! `kiln run`: a command in a new container from an image in kiln's store, with `docker run`'s
//! rules for entrypoint and command, environment, user, working dir, mounts and exit codes.
//!
//! A container is an overlay snapshot over the image's extracted layers with a throwaway upper
//! dir, run by `kiln-executor`'s sandbox in the foreground; the snapshot is removed when the
//! command exits. While it runs, the container is registered in the store under its id and
//! name for `kiln ps`, `exec`, `stop` and `kill` (`super::containers`). kiln keeps no stopped
//! containers, so every container behaves as with `docker run --rm`: `--rm` is accepted.
//!
//! Differences from Docker, on purpose or not yet done:
//! - The network is the host's by default (Docker's default is a bridge: kiln has no bridge
//!   network yet); `--network none` gives a namespace with only `lo`.
//! - Bind mounts (`-v /host:/ctr[:ro|rw]`, `--mount type=bind`) and tmpfs mounts (`--tmpfs`,
//!   `--mount type=tmpfs`) only; a bind's host path must exist (Docker creates a missing one as a
//!   directory); no named volumes.
//! - `--add-host NAME:host-gateway` maps to 127.0.0.1 (the host network is the host's own) and is
//!   rejected with `--network none`.
//! - `--init` runs kiln's own minimal init as PID 1 (Docker bind-mounts tini); see
//!   `kiln_executor::init`.
//! - `--name` names the container while it runs (unique among running containers); the name is
//!   free again once it exits, since no stopped containers are kept.
//! - `-m/--memory` leaves no swap beyond the limit (Docker without `--memory-swap` allows as much
//!   swap again); there is no `--memory-swap` or CPU limit yet. An OOM kill is reported on stderr
//!   (Docker shows it only in `docker inspect`).
//!
//! Exit codes follow Docker: the command's own code, 128 + N when a signal N killed it, 125 when
//! kiln fails before the command starts, 126 when the command cannot be executed and 127 when it
//! is not found.

use std::collections::HashSet;
use std::fs;
use std::io::{self, IsTerminal, Read};
use std::os::fd::AsFd;
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use kiln_executor::cgroup::SizeError;
use kiln_executor::plan::{self, PlanError};
use kiln_executor::snapshot::default_snapshotter_cached;
use kiln_executor::syscall::LinuxSyscall;
use kiln_executor::{CapabilitySet, Confinement};
use kiln_executor::{
    ExitStatus, ExtraMount, Input, NetworkMode, Output, ResourceLimits, RootMount, SandboxError,
    SandboxIo, SandboxSpec, SnapshotError, mount_stubs,
};
use kiln_image::config::{ContainerConfig, ImageConfig};
use kiln_image::{Platform, Reference};
use kiln_solver::ScratchDir;
use kiln_store::Store;
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::termios::{self, SetArg, Termios};
use thiserror::Error;

use super::images::find_image;
use super::open_store;
use crate::cli::Global;

mod flags;
pub(crate) use flags::{FlagError, HostGateway, parse_add_host};

/// Docker's exit code when the failure is kiln's own, before the command started.
const EXIT_KILN_ERROR: u8 = 125;
/// Docker's exit code when the command exists but cannot be executed.
const EXIT_CANNOT_EXECUTE: u8 = 126;
/// Docker's exit code when the command is not found.
const EXIT_NOT_FOUND: u8 = 127;
/// Docker's default PATH, first in a container's environment until the image's own replaces it.
const DEFAULT_PATH: &str = kiln_executor::sandbox::DEFAULT_PATH;
/// Linux's limit on a host name (`HOST_NAME_MAX`).
const HOST_NAME_MAX: usize = 64;

/// The network a container joins.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NetworkArg {
    /// The host's network (kiln's default; Docker's default is a bridge, which kiln lacks).
    #[default]
    Host,
    /// A network namespace with only the loopback interface.
    None,
}

#[derive(clap::Args, Debug)]
#[command(override_usage = "kiln run [OPTIONS] IMAGE [COMMAND] [ARG...]")]
pub struct RunArgs {
    /// Remove the container when it exits. Accepted for Docker compatibility: kiln keeps no
    /// containers yet, so every container is removed when its command exits.
    #[arg(long)]
    pub rm: bool,

    /// A name for the container (Docker's rule: [a-zA-Z0-9][a-zA-Z0-9_.-]+), unique among running
    /// containers; a readable one is generated when none is given.
    #[arg(long)]
    pub name: Option<String>,

    /// Set an environment variable; `-e KEY` passes kiln's own value of KEY (skipped if unset).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE|KEY")]
    pub env: Vec<String>,

    /// Read environment variables from a file (KEY=VALUE or KEY per line; # comments).
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,

    /// Bind-mount a host path: /host/path:/container/path[:ro|rw].
    #[arg(short = 'v', long = "volume", value_name = "HOST:CONTAINER[:ro|rw]")]
    pub volume: Vec<String>,

    /// Mount a tmpfs (default options noexec,nosuid,nodev; add e.g. size=64m,mode=1777,exec).
    #[arg(long = "tmpfs", value_name = "PATH[:OPTIONS]")]
    pub tmpfs: Vec<String>,

    /// Attach a mount: type=bind,source=/host,target=/ctr[,readonly] or
    /// type=tmpfs,target=/ctr[,tmpfs-size=BYTES][,tmpfs-mode=OCTAL] (no volumes in kiln).
    #[arg(long = "mount", value_name = "type=bind|tmpfs,...")]
    pub mount: Vec<String>,

    /// Add a line to /etc/hosts: NAME:IP or NAME=IP (repeatable); host-gateway is 127.0.0.1,
    /// the host network's own.
    #[arg(long = "add-host", value_name = "NAME:IP")]
    pub add_host: Vec<String>,

    /// Run an init as PID 1 that forwards signals to the command and reaps zombies.
    #[arg(long)]
    pub init: bool,

    /// Every capability, no masked or read-only /proc and /sys paths, and usable device nodes
    /// (unlike Docker, /dev keeps its minimal set rather than the host's devices).
    #[arg(long)]
    pub privileged: bool,

    /// Add a Linux capability to Docker's default set: NET_ADMIN, CAP_NET_ADMIN or ALL (repeatable).
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,

    /// Drop a Linux capability from Docker's default set: CHOWN, CAP_CHOWN or ALL (repeatable).
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,

    /// Security options: only `seccomp=unconfined` (no seccomp filter) is supported (repeatable).
    #[arg(long = "security-opt", value_name = "OPT")]
    pub security_opt: Vec<String>,

    /// Working directory inside the container (created if missing).
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,

    /// User to run as: name or uid, optionally with :group or :gid.
    #[arg(short = 'u', long = "user", value_name = "USER[:GROUP]")]
    pub user: Option<String>,

    /// Replace the image's entrypoint (and drop the image's default command); "" clears it.
    #[arg(long, value_name = "COMMAND")]
    pub entrypoint: Option<String>,

    /// Keep stdin attached to the command.
    #[arg(short = 'i', long)]
    pub interactive: bool,

    /// Give the command a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,

    /// Network: host (the default) or none.
    #[arg(long, value_enum, default_value_t = NetworkArg::Host)]
    pub network: NetworkArg,

    /// The container's host name (default: the first 12 hex digits of its random id).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,

    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,

    /// Memory limit, as Docker writes it: a number with an optional unit b, k, m or g (64m); at
    /// least 6m, 0 for none. Swap cannot be used to go beyond it. Exceeding it gets the command
    /// killed, reported as out of memory.
    #[arg(short = 'm', long, value_name = "BYTES", value_parser = parse_memory_flag)]
    pub memory: Option<u64>,

    /// Limit on the number of processes and threads in the container (0 or -1: unlimited).
    #[arg(long = "pids-limit", value_name = "N", allow_negative_numbers = true)]
    pub pids_limit: Option<i64>,

    /// The image (a name or an image id prefix), then the command and its arguments.
    #[arg(
        value_name = "IMAGE [COMMAND] [ARG...]",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub image_and_command: Vec<String>,
}

/// What can stop a container from starting; each knows Docker's exit code for it.
#[derive(Debug, Error)]
pub enum RunError {
    #[error("{0}")]
    InvalidOption(String),
    #[error(transparent)]
    Flag(#[from] FlagError),
    #[error("reading env file {path}: {source}")]
    EnvFile { path: PathBuf, source: io::Error },
    #[error("env file {path} line {line}: {reason}")]
    EnvFileSyntax {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("image {0} not found in kiln's store; kiln pull or kiln build it first")]
    ImageNotFound(String),
    #[error("no command specified: the image has no Entrypoint or Cmd and none was given")]
    NoCommand,
    #[error("preparing the container's root filesystem: {0}")]
    Snapshot(#[from] SnapshotError),
    #[error("mounting the read-only root at {path}: {source}")]
    ReadOnlyRoot { path: PathBuf, source: io::Error },
    #[error("mounting the read-only root: {0}")]
    ReadOnlyPlan(#[from] PlanError),
    #[error("creating a scratch dir in the store: {0}")]
    Scratch(io::Error),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl RunError {
    /// Docker's exit code for this failure (`runStartContainerErr` in Docker's CLI): 127 when the
    /// command is not there, 126 when it is there but cannot be executed, 125 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Sandbox(SandboxError::CommandNotFound { .. }) => EXIT_NOT_FOUND,
            RunError::Sandbox(SandboxError::Setup { step, errno }) if step.starts_with("exec ") => {
                match errno {
                    Errno::ENOENT | Errno::ENOTDIR => EXIT_NOT_FOUND,
                    _ => EXIT_CANNOT_EXECUTE,
                }
            }
            _ => EXIT_KILN_ERROR,
        }
    }
}

/// `kiln run`: runs the container in the foreground and returns its exit code. Never fails
/// itself: kiln's own errors are reported here and become Docker's 125, 126 or 127.
pub fn run(args: RunArgs, global: &Global) -> anyhow::Result<ExitCode> {
    match run_container(args, global) {
        Ok(status) => {
            // Docker records this as OOMKilled; say it, since 137 alone looks like any kill -9.
            if matches!(status, ExitStatus::OutOfMemory { .. }) {
                eprintln!("kiln: {status}");
            }
            Ok(exit_code_of(status))
        }
        Err(error) => {
            report(&error);
            Ok(ExitCode::from(error.exit_code()))
        }
    }
}

/// Parses `--memory` (for `kiln run` and `kiln build`) as Docker does; 0 means no limit. clap
/// names the flag in the error.
///
/// # Errors
/// A malformed size, one past `u64`, or one below Docker's minimum of 6 MiB.
pub(crate) fn parse_memory_flag(text: &str) -> Result<u64, SizeError> {
    Ok(kiln_executor::cgroup::parse_memory_limit(text)?.unwrap_or(0))
}

/// The process's exit code for the command's status: its code, or 128 + the signal.
fn exit_code_of(status: ExitStatus) -> ExitCode {
    ExitCode::from(u8::try_from(status.code()).unwrap_or(EXIT_KILN_ERROR))
}

/// Prints an error and its causes as `main` does for other commands.
fn report(error: &RunError) {
    eprintln!("error: {error}");
    // `Other` is transparent: its Display is the anyhow error's own message, and the anyhow
    // chain holds the causes its source() would not show.
    let causes: Vec<String> = match error {
        RunError::Other(inner) => inner.chain().skip(1).map(ToString::to_string).collect(),
        _ => std::iter::successors(std::error::Error::source(error), |cause| cause.source())
            .map(ToString::to_string)
            .collect(),
    };
    // Our typed errors already say their source in their message: print a cause only when the
    // line before does not contain it.
    let mut previous = error.to_string();
    for cause in causes {
        if !previous.contains(&cause) {
            eprintln!("  caused by: {cause}");
        }
        previous = cause;
    }
}

/// The command line checked and turned into what the container needs, before the store is
/// touched (ripgrep's low-args → high-args step).
#[derive(Debug)]
struct RunOptions {
    /// 64 random hex digits, as Docker's container ids.
    id: String,
    name: Option<String>,
    image: String,
    command: Vec<String>,
    /// `KEY=VALUE` from `--env-file` then `-e`, in order.
    env: Vec<String>,
    /// `-v`, then `--mount`, then `--tmpfs`, each in order.
    mounts: Vec<ExtraMount>,
    /// `--add-host`, as (name, address).
    extra_hosts: Vec<(String, String)>,
    init: bool,
    /// `--privileged`, `--cap-add`, `--cap-drop`.
    confinement: Confinement,
    workdir: Option<String>,
    user: Option<String>,
    entrypoint: Option<String>,
    interactive: bool,
    tty: bool,
    network: NetworkMode,
    hostname: String,
    read_only: bool,
    /// `--memory` and `--pids-limit`.
    limits: ResourceLimits,
}

impl RunOptions {
    fn from_args(args: RunArgs) -> Result<RunOptions, RunError> {
        let mut positional = args.image_and_command.into_iter();
        let image = positional
            .next()
            .ok_or_else(|| RunError::InvalidOption("an image is required".into()))?;
        if let Some(name) = &args.name {
            check_container_name(name)?;
        }
        let lookup = |key: &str| std::env::var(key).ok();
        let mut env = Vec::new();
        for path in &args.env_file {
            env.extend(read_env_file(path, &lookup)?);
        }
        for entry in &args.env {
            env.extend(parse_env_flag(entry, &lookup)?);
        }
        let mut mounts = args
            .volume
            .iter()
            .map(|spec| parse_volume(spec))
            .collect::<Result<Vec<_>, _>>()?;
        for spec in &args.mount {
            mounts.push(flags::parse_mount(spec)?);
        }
        for spec in &args.tmpfs {
            mounts.push(flags::parse_tmpfs(spec)?);
        }
        let gateway = match args.network {
            NetworkArg::Host => HostGateway::Loopback,
            NetworkArg::None => HostGateway::Unreachable,
        };
        let extra_hosts = args
            .add_host
            .iter()
            .map(|value| parse_add_host(value, gateway))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(dir) = &args.workdir
            && !dir.starts_with('/')
        {
            return Err(RunError::InvalidOption(format!(
                "the working directory {dir:?} is invalid, it needs to be an absolute path"
            )));
        }
        // Names are checked even with --privileged, which then keeps every capability anyway.
        let capabilities = CapabilitySet::docker_default_with(&args.cap_add, &args.cap_drop)
            .map_err(|e| RunError::InvalidOption(e.to_string()))?;
        let seccomp = seccomp_confined(&args.security_opt)?;
        let confinement = if args.privileged {
            Confinement::privileged()
        } else {
            Confinement {
                capabilities,
                privileged: false,
                seccomp,
            }
        };
        let id = random_container_id()
            .map_err(|e| RunError::Other(anyhow::Error::new(e).context("making a container id")))?;
        let hostname = match args.hostname {
            Some(name) => {
                check_hostname(&name)?;
                name
            }
            // Docker's short id: the first 12 hex digits.
            None => id.chars().take(12).collect(),
        };
        Ok(RunOptions {
            id,
            name: args.name,
            image,
            command: positional.collect(),
            env,
            mounts,
            extra_hosts,
            init: args.init,
            confinement,
            workdir: args.workdir,
            user: args.user,
            entrypoint: args.entrypoint,
            interactive: args.interactive,
            tty: args.tty,
            network: match args.network {
                NetworkArg::Host => NetworkMode::Host,
                NetworkArg::None => NetworkMode::None,
            },
            hostname,
            read_only: args.read_only,
            limits: ResourceLimits {
                // 0 means no limit for both flags, as with Docker; -1 too for --pids-limit.
                memory_bytes: args.memory.filter(|bytes| *bytes > 0),
                pids_max: args
                    .pids_limit
                    .and_then(|max| u64::try_from(max).ok())
                    .filter(|max| *max > 0),
            },
        })
    }
}

fn run_container(args: RunArgs, global: &Global) -> Result<ExitStatus, RunError> {
    let options = RunOptions::from_args(args)?;
    let store = open_store(global)?;
    // Held until the container exits: a prune must not delete the layers under its root.
    let _lock = store
        .lock_shared()
        .map_err(|e| anyhow::Error::new(e).context("locking the store"))?;
    let (config, layers) = load_image(&store, &options.image)?;
    let spec_args = process_args(
        &config.config,
        options.entrypoint.as_deref(),
        &options.command,
    )?;

    let scratch = ScratchDir::new(&store, "run").map_err(RunError::Scratch)?;
    // Probes overlayfs only until it has worked once for this store on this host.
    let snapshotter = default_snapshotter_cached(store.root(), scratch.path());
    let stubs = mount_stubs(&options.mounts);
    // The scratch dir itself: the snapshot's own entries (`upper`, `work`...) sit beside `ro-root`.
    let snapshot = snapshotter.prepare(&layers, scratch.path(), &stubs)?;
    let read_only_root = if options.read_only {
        Some(ReadOnlyRoot::mount(
            snapshot.mount(),
            &scratch.path().join("ro-root"),
        )?)
    } else {
        None
    };
    let rootfs = match &read_only_root {
        Some(root) => RootMount::Bind {
            source: root.path.clone(),
        },
        None => snapshot.mount().clone(),
    };

    let mut spec = SandboxSpec::new(rootfs, scratch.path().join("sandbox"), spec_args);
    spec.env = container_env(&config.config, &options);
    spec.cwd = options
        .workdir
        .clone()
        .unwrap_or_else(|| image_workdir(&config.config));
    spec.user = options
        .user
        .clone()
        .unwrap_or_else(|| config.config.user.clone());
    spec.hostname = options.hostname.clone();
    spec.network = options.network;
    spec.mounts = options.mounts.clone();
    spec.extra_hosts = options.extra_hosts.clone();
    spec.init = options.init;
    spec.confinement = options.confinement;
    spec.limits = options.limits;

    let _raw_terminal = if options.tty && options.interactive {
        RawTerminal::enable()
    } else {
        None
    };
    // Registered until the command ends: `kiln ps`/`exec`/`stop`/`kill` find it meanwhile.
    let tracked = super::containers::track(
        &store,
        super::containers::NewContainer {
            id: &options.id,
            name: options.name.as_deref(),
            image: &options.image,
            spec: &spec,
            stop_signal: &config.config.stop_signal,
        },
    )?;
    let record_started = |pid: i32| tracked.record_started(pid);
    let io = SandboxIo {
        stdin: if options.interactive {
            Input::Inherit
        } else {
            Input::Null
        },
        stdout: Output::Inherit,
        stderr: Output::Inherit,
        tty: options.tty,
        forward_signals: true,
        on_started: Some(&record_started),
    };
    let status = kiln_executor::run(&spec, io);
    drop(tracked);
    // The read-only mount sits inside the scratch dir: unmount before the scratch dir goes.
    drop(read_only_root);
    drop(scratch);
    Ok(status?)
}

/// Finds the image, reads its config, and makes sure its layers are extracted; returns the
/// config and the layer dirs, bottom first.
fn load_image(store: &Store, name: &str) -> Result<(ImageConfig, Vec<PathBuf>), RunError> {
    let Some(found) = find_image(store, name)? else {
        let shown = Reference::parse(name)
            .map(|r| r.with_default_tag().familiar())
            .unwrap_or_else(|_| name.to_string());
        return Err(RunError::ImageNotFound(shown));
    };
    let record = found.record;
    let manifest = store
        .manifest(&record.manifest_digest)
        .map_err(|e| anyhow::Error::new(e).context(format!("reading the manifest of {name}")))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "the store has no manifest record {} for image {name}",
                record.manifest_digest
            )
        })?;
    let config = kiln_solver::image::read_config(store, &manifest)
        .map_err(|e| anyhow::Error::new(e).context(format!("reading the config of {name}")))?;
    warn_on_foreign_platform(&config);
    let layers = kiln_solver::layers::ensure_extracted(store, &manifest.layers)
        .map_err(|e| anyhow::Error::new(e).context(format!("extracting the layers of {name}")))?;
    Ok((config, layers.into_iter().map(|layer| layer.dir).collect()))
}

/// Docker's warning when an image was made for another platform (it will likely fail to run).
fn warn_on_foreign_platform(config: &ImageConfig) {
    let host = Platform::host();
    let os_differs = !config.os.is_empty() && config.os != host.os;
    let arch_differs = !config.architecture.is_empty() && config.architecture != host.architecture;
    if os_differs || arch_differs {
        eprintln!(
            "WARNING: The requested image's platform ({}/{}) does not match the detected host platform ({}/{})",
            config.os, config.architecture, host.os, host.architecture
        );
    }
}

/// Docker's rules: `--entrypoint` replaces the image's entrypoint and drops its Cmd; a command
/// on the command line replaces the Cmd; the process is entrypoint + cmd.
///
/// # Errors
/// [`RunError::NoCommand`] when that leaves nothing to run.
fn process_args(
    config: &ContainerConfig,
    entrypoint_flag: Option<&str>,
    command: &[String],
) -> Result<Vec<String>, RunError> {
    let entrypoint: Vec<String> = match entrypoint_flag {
        Some("") => Vec::new(),
        Some(entrypoint) => vec![entrypoint.to_string()],
        None => config.entrypoint.clone().unwrap_or_default(),
    };
    let cmd: Vec<String> = if !command.is_empty() {
        command.to_vec()
    } else if entrypoint_flag.is_some() {
        Vec::new()
    } else {
        config.cmd.clone().unwrap_or_default()
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.first().is_none_or(String::is_empty) {
        return Err(RunError::NoCommand);
    }
    Ok(args)
}

/// The container's environment as Docker builds it: a default PATH, HOSTNAME and (with a tty)
/// TERM, then the image's Env, `--env-file` and `-e`, each replacing earlier values of the same
/// key in place. HOME is added by the sandbox from the user's passwd entry when still missing.
fn container_env(config: &ContainerConfig, options: &RunOptions) -> Vec<String> {
    let mut env = vec![
        format!("PATH={DEFAULT_PATH}"),
        format!("HOSTNAME={}", options.hostname),
    ];
    if options.tty {
        env.push("TERM=xterm".to_string());
    }
    for entry in config.env.iter().chain(&options.env) {
        replace_or_append(&mut env, entry);
    }
    env
}

fn env_key(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(key, _)| key)
}

/// Replaces the entry with the same key as `entry`, or appends it (Docker's
/// `ReplaceOrAppendEnvValues`).
fn replace_or_append(env: &mut Vec<String>, entry: &str) {
    let key = env_key(entry);
    match env.iter_mut().find(|existing| env_key(existing) == key) {
        Some(existing) => *existing = entry.to_string(),
        None => env.push(entry.to_string()),
    }
}

/// The image's WorkingDir, `/` when unset (a relative one is taken from `/`).
fn image_workdir(config: &ContainerConfig) -> String {
    match config.working_dir.as_str() {
        "" => "/".to_string(),
        dir if dir.starts_with('/') => dir.to_string(),
        dir => format!("/{dir}"),
    }
}

/// `-e KEY=VALUE` as is; `-e KEY` with kiln's own value, or nothing when KEY is unset.
fn parse_env_flag(
    entry: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<String>, RunError> {
    let key = env_key(entry);
    if key.is_empty() {
        return Err(RunError::InvalidOption(format!(
            "invalid environment variable: {entry}"
        )));
    }
    if entry.contains('=') {
        return Ok(Some(entry.to_string()));
    }
    Ok(lookup(key).map(|value| format!("{key}={value}")))
}

/// Reads an env file with Docker's rules: leading white space and blank lines and `#` comments
/// ignored; `KEY=VALUE` taken as is (the value untrimmed); a bare `KEY` takes kiln's own value
/// and is skipped when unset; a key with white space in it is an error.
fn read_env_file(
    path: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>, RunError> {
    let text = fs::read_to_string(path).map_err(|source| RunError::EnvFile {
        path: path.to_path_buf(),
        source,
    })?;
    parse_env_file(&text, lookup).map_err(|(line, reason)| RunError::EnvFileSyntax {
        path: path.to_path_buf(),
        line,
        reason,
    })
}

/// The lines of an env file (see [`read_env_file`]); errors are (line number, reason).
fn parse_env_file(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<String>, (usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut env = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = match line.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (line, None),
        };
        if key.is_empty() {
            return Err((index + 1, format!("no variable name in {line:?}")));
        }
        if key.contains(char::is_whitespace) {
            return Err((index + 1, format!("variable {key:?} contains white space")));
        }
        match value {
            Some(value) => env.push(format!("{key}={value}")),
            None => {
                if let Some(value) = lookup(key) {
                    env.push(format!("{key}={value}"));
                }
            }
        }
    }
    Ok(env)
}

/// `-v /host:/container[:ro|rw]`: a bind mount of an existing host path onto an absolute
/// container path.
fn parse_volume(spec: &str) -> Result<ExtraMount, RunError> {
    let invalid =
        |reason: &str| RunError::InvalidOption(format!("invalid volume {spec:?}: {reason}"));
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, mode) = match parts.as_slice() {
        [source, target] => (*source, *target, None),
        [source, target, mode] => (*source, *target, Some(*mode)),
        _ => return Err(invalid("expected HOST:CONTAINER[:ro|rw]")),
    };
    if !source.starts_with('/') {
        return Err(invalid(
            "the host path must be absolute (kiln supports bind mounts only, not named volumes)",
        ));
    }
    if fs::symlink_metadata(source).is_err() {
        return Err(invalid(&format!("host path {source} does not exist")));
    }
    if !target.starts_with('/') {
        return Err(invalid("the container path must be absolute"));
    }
    let target_path = Path::new(target);
    if target_path
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(invalid("the container path must not contain .."));
    }
    if target_path.components().all(|c| c == Component::RootDir) {
        return Err(invalid("the container path cannot be /"));
    }
    let mut read_only = false;
    if let Some(mode) = mode {
        let mut seen = HashSet::new();
        for option in mode.split(',') {
            if !seen.insert(option) {
                return Err(invalid(&format!("option {option} given twice")));
            }
            match option {
                "ro" => read_only = true,
                "rw" => read_only = false,
                other => return Err(invalid(&format!("unsupported option {other:?} (ro or rw)"))),
            }
        }
        if seen.contains("ro") && seen.contains("rw") {
            return Err(invalid("ro and rw together"));
        }
    }
    Ok(ExtraMount::Bind {
        source: PathBuf::from(source),
        target: target_path.to_path_buf(),
        read_only,
    })
}

/// Docker's container name rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
/// Whether the default seccomp filter applies given `--security-opt` values: `seccomp=unconfined`
/// (or Docker's `seccomp:unconfined`) lifts it; other options, custom profiles included, are not
/// supported and are refused rather than silently ignored.
fn seccomp_confined(options: &[String]) -> Result<bool, RunError> {
    let mut confined = true;
    for option in options {
        let value = option
            .strip_prefix("seccomp=")
            .or_else(|| option.strip_prefix("seccomp:"));
        match value {
            Some("unconfined") => confined = false,
            Some(profile) => {
                return Err(RunError::InvalidOption(format!(
                    "--security-opt seccomp={profile}: only seccomp=unconfined is supported \
                     (custom profiles are not)"
                )));
            }
            None => {
                return Err(RunError::InvalidOption(format!(
                    "--security-opt {option:?} is not supported (only seccomp=unconfined)"
                )));
            }
        }
    }
    Ok(confined)
}

fn check_container_name(name: &str) -> Result<(), RunError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok =
        name.len() >= 2 && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err(RunError::InvalidOption(format!(
            "invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-]+ are allowed"
        )))
    }
}

/// A host name the kernel accepts: 1 to 64 bytes, no NUL, no white space.
fn check_hostname(name: &str) -> Result<(), RunError> {
    if name.is_empty()
        || name.len() > HOST_NAME_MAX
        || name.contains(|c: char| c == '\0' || c.is_whitespace())
    {
        return Err(RunError::InvalidOption(format!(
            "invalid hostname {name:?}: 1 to {HOST_NAME_MAX} characters, no white space"
        )));
    }
    Ok(())
}

/// A random container id as Docker makes them: 32 random bytes in hex.
fn random_container_id() -> io::Result<String> {
    let mut bytes = [0u8; 32];
    fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The container's root mounted read-only, for `--read-only`. The sandbox mounts a root as given
/// and has no read-only switch, so kiln mounts the snapshot itself, in a private mount namespace of
/// its own (nothing shows on the host, and the mount dies with kiln however it ends), remounts it
/// read-only and hands it to the sandbox as a bind root: a bind mount keeps the read-only flag.
struct ReadOnlyRoot {
    path: PathBuf,
}

impl ReadOnlyRoot {
    fn mount(root: &RootMount, path: &Path) -> Result<ReadOnlyRoot, RunError> {
        let failed = |errno: Errno| RunError::ReadOnlyRoot {
            path: path.to_path_buf(),
            source: io::Error::from(errno),
        };
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(failed)?;
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(failed)?;
        fs::create_dir_all(path).map_err(|source| RunError::ReadOnlyRoot {
            path: path.to_path_buf(),
            source,
        })?;
        // The mount stubs (/proc, /etc/hosts...) go on disk beside the mount point.
        let root = root.with_stub_layer(&path.with_extension("stubs"))?;
        let step = plan::root_mount_step(&root, path)?;
        plan::execute(&[step], &LinuxSyscall, &mut []).map_err(|failure| failed(failure.errno))?;
        let mounted = ReadOnlyRoot {
            path: path.to_path_buf(),
        };
        nix::mount::mount(
            None::<&str>,
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(failed)?;
        Ok(mounted)
    }
}

impl Drop for ReadOnlyRoot {
    fn drop(&mut self) {
        if let Err(errno) = nix::mount::umount2(&self.path, MntFlags::MNT_DETACH) {
            tracing::warn!(path = %self.path.display(), %errno, "could not unmount the read-only root");
        }
    }
}

/// The caller's terminal in raw mode while an interactive tty container runs (keys go to the
/// container's terminal as typed, Ctrl-C included), restored on drop.
pub(crate) struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    /// `None` when stdin is not a terminal or its mode cannot be changed.
    pub(crate) fn enable() -> Option<RawTerminal> {
        let stdin = io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `kiln run <args>` through clap and [`RunOptions::from_args`].
    fn run_options(args: &[&str]) -> Result<RunOptions, String> {
        use clap::Parser as _;
        let cli = crate::cli::Cli::try_parse_from(["kiln", "run"].iter().chain(args))
            .map_err(|e| e.to_string())?;
        match cli.command {
            crate::cli::Command::Run(args) => {
                RunOptions::from_args(args).map_err(|e| e.to_string())
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn init_hosts_and_mount_flags_reach_the_options_in_order() {
        let host = tempfile::tempdir().unwrap();
        let bind = format!("type=bind,src={},dst=/b", host.path().display());
        let volume = format!("{}:/v", host.path().display());
        let options = run_options(&[
            "--init",
            "--tmpfs",
            "/t",
            "--mount",
            &bind,
            "-v",
            &volume,
            "--add-host",
            "a:1.2.3.4",
            "--add-host",
            "b=::1",
            "img",
        ])
        .unwrap();
        assert!(options.init);
        assert_eq!(
            options.extra_hosts,
            [("a".into(), "1.2.3.4".into()), ("b".into(), "::1".into())]
        );
        let targets: Vec<_> = options
            .mounts
            .iter()
            .map(|m| match m {
                ExtraMount::Bind { target, .. } | ExtraMount::TmpfsWithOptions { target, .. } => {
                    target.display().to_string()
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(targets, ["/v", "/b", "/t"]);
        assert!(!run_options(&["img"]).unwrap().init);
        // host-gateway needs the host network.
        let error = run_options(&["--network", "none", "--add-host", "h:host-gateway", "img"]);
        assert!(error.unwrap_err().contains("host-gateway"));
    }

    #[test]
    fn memory_and_pids_limit_flags_follow_docker() {
        let limits = |args: &[&str]| run_options(args).map(|options| options.limits);
        assert_eq!(
            limits(&["-m", "64m", "--pids-limit", "20", "img"]),
            Ok(ResourceLimits {
                memory_bytes: Some(64 << 20),
                pids_max: Some(20)
            })
        );
        assert_eq!(
            limits(&["--memory=1.5g", "img"]).map(|l| l.memory_bytes),
            Ok(Some(3 << 29))
        );
        // 0 and -1 mean unlimited, as with Docker; no flag, no limits.
        assert_eq!(
            limits(&["--memory", "0", "--pids-limit", "-1", "img"]),
            Ok(ResourceLimits::default())
        );
        assert_eq!(
            limits(&["--pids-limit", "0", "img"]),
            Ok(ResourceLimits::default())
        );
        assert_eq!(limits(&["img"]), Ok(ResourceLimits::default()));
        // Bad values name the flag.
        for (args, flag) in [
            (&["-m", "64x", "img"][..], "--memory"),
            (&["--memory", "5m", "img"][..], "--memory"),
            (&["--pids-limit", "many", "img"][..], "--pids-limit"),
        ] {
            let error = limits(args).unwrap_err();
            assert!(error.contains(flag), "{args:?}: {error}");
        }
    }

    fn config(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> ContainerConfig {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let mut config = ContainerConfig::default();
        config.entrypoint = entrypoint.map(strings);
        config.cmd = cmd.map(strings);
        config
    }

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn entrypoint_and_cmd_follow_docker() {
        let image = config(Some(&["/ep", "a"]), Some(&["c1", "c2"]));
        assert_eq!(
            process_args(&image, None, &[]).unwrap(),
            args(&["/ep", "a", "c1", "c2"])
        );
        assert_eq!(
            process_args(&image, None, &args(&["x", "y"])).unwrap(),
            args(&["/ep", "a", "x", "y"])
        );
        // --entrypoint drops the image's Cmd too.
        assert_eq!(
            process_args(&image, Some("/other"), &[]).unwrap(),
            args(&["/other"])
        );
        assert_eq!(
            process_args(&image, Some("/other"), &args(&["z"])).unwrap(),
            args(&["/other", "z"])
        );
        // --entrypoint "" clears it: the command line alone runs.
        assert_eq!(
            process_args(&image, Some(""), &args(&["ls"])).unwrap(),
            args(&["ls"])
        );
        assert!(matches!(
            process_args(&image, Some(""), &[]),
            Err(RunError::NoCommand)
        ));
        assert!(matches!(
            process_args(&config(None, None), None, &[]),
            Err(RunError::NoCommand)
        ));
        assert_eq!(
            process_args(&config(None, Some(&["sh"])), None, &[]).unwrap(),
            args(&["sh"])
        );
    }

    #[test]
    fn env_flags_and_files_follow_docker() {
        let lookup = |key: &str| (key == "SET").then(|| "from-kiln".to_string());
        assert_eq!(
            parse_env_flag("A=1=2", &lookup).unwrap().as_deref(),
            Some("A=1=2")
        );
        assert_eq!(
            parse_env_flag("SET", &lookup).unwrap().as_deref(),
            Some("SET=from-kiln")
        );
        assert_eq!(parse_env_flag("UNSET", &lookup).unwrap(), None);
        assert!(parse_env_flag("=x", &lookup).is_err());

        let file = "\u{feff}# comment\n\n  A=  spaced value \nSET\nUNSET\nB=\n";
        assert_eq!(
            parse_env_file(file, &lookup).unwrap(),
            args(&["A=  spaced value ", "SET=from-kiln", "B="])
        );
        assert_eq!(
            parse_env_file("OK=1\nBAD KEY=1\n", &lookup).unwrap_err().0,
            2
        );
        assert_eq!(parse_env_file("=1\n", &lookup).unwrap_err().0, 1);
    }

    #[test]
    fn later_env_entries_replace_earlier_ones_in_place() {
        let mut env = args(&["PATH=/bin", "A=1"]);
        replace_or_append(&mut env, "PATH=/usr/bin");
        replace_or_append(&mut env, "B=2");
        replace_or_append(&mut env, "A=3");
        assert_eq!(env, args(&["PATH=/usr/bin", "A=3", "B=2"]));
    }

    #[test]
    fn volumes_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().display().to_string();
        assert_eq!(
            parse_volume(&format!("{host}:/data")).unwrap(),
            ExtraMount::Bind {
                source: tmp.path().to_path_buf(),
                target: "/data".into(),
                read_only: false,
            }
        );
        assert!(matches!(
            parse_volume(&format!("{host}:/data:ro")).unwrap(),
            ExtraMount::Bind {
                read_only: true,
                ..
            }
        ));
        for bad in [
            host.clone(),
            format!("{host}:data"),
            format!("{host}:/"),
            format!("{host}:/a/../b"),
            format!("{host}:/data:shared"),
            format!("{host}:/data:ro,rw"),
            "named:/data".to_string(),
            format!("{host}/missing:/data"),
        ] {
            assert!(parse_volume(&bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn names_and_hostnames_are_checked() {
        assert!(check_container_name("web-1.a_b").is_ok());
        for bad in ["a", "-web", "we b", "", "web/1"] {
            assert!(check_container_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_hostname("box").is_ok());
        assert!(check_hostname("").is_err());
        assert!(check_hostname(&"h".repeat(65)).is_err());
        let id = random_container_id().unwrap();
        assert_eq!(id.len(), 64);
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn exit_codes_follow_docker() {
        let not_found = RunError::Sandbox(SandboxError::CommandNotFound {
            command: "nope".into(),
        });
        assert_eq!(not_found.exit_code(), 127);
        let not_executable = RunError::Sandbox(SandboxError::Setup {
            step: "exec /etc".into(),
            errno: Errno::EACCES,
        });
        assert_eq!(not_executable.exit_code(), 126);
        let mount_failed = RunError::Sandbox(SandboxError::Setup {
            step: "mount /data".into(),
            errno: Errno::ENOENT,
        });
        assert_eq!(mount_failed.exit_code(), 125);
        assert_eq!(RunError::NoCommand.exit_code(), 125);
        assert_eq!(exit_code_of(ExitStatus::Signaled(9)), ExitCode::from(137));
    }
}

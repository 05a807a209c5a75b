//! Commands on running containers: `kiln ps`, `kiln exec`, `kiln stop`, `kiln kill`, and the
//! registration `kiln run` makes so that they can find its container.
//!
//! kiln has no daemon: a container lives exactly as long as the `kiln run` that runs it in the
//! foreground, and is known to the other commands through the store's registry
//! (`kiln_store::Containers`). `kiln run` registers the container (taking its name) before the
//! sandbox starts, records the sandbox's PID 1 once its command has been exec'd, and removes the
//! entry when the command ends. Since no stopped containers are kept, `kiln ps -a` lists the same
//! as `kiln ps` plus containers still starting (Docker's `-a` shows stopped ones too).

use std::io::{self, IsTerminal};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use kiln_executor::enter::{self, EnterError, EnterSpec};
use kiln_executor::{Confinement, SandboxSpec};
use kiln_store::{ContainerError, ContainerState, Containers, ProcessId, Registration, Store};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::images::{human_duration, render_table};
use super::open_store;
use crate::cli::Global;

/// How often `kiln run` looks for its sandbox's started PID 1, and `kiln stop` for its end.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Docker's exit code when `kiln exec` cannot execute the command, and when it is not found.
const EXIT_CANNOT_EXECUTE: u8 = 126;
const EXIT_NOT_FOUND: u8 = 127;

#[derive(clap::Args, Debug)]
pub struct PsArgs {
    /// Also list containers that are still starting (kiln keeps no stopped containers).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only print container ids.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Do not truncate ids and commands.
    #[arg(long)]
    pub no_trunc: bool,
}

#[derive(clap::Args, Debug)]
#[command(override_usage = "kiln exec [OPTIONS] CONTAINER COMMAND [ARG...]")]
pub struct ExecArgs {
    /// Keep stdin attached to the command.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Give the command a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Set an environment variable (KEY=VALUE, or KEY for kiln's own value).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE|KEY")]
    pub env: Vec<String>,
    /// User to run as: name or uid, optionally with :group or :gid (default: the container's).
    #[arg(short = 'u', long, value_name = "USER[:GROUP]")]
    pub user: Option<String>,
    /// Working directory inside the container (default: the container's).
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// The container (name, id or id prefix), then the command and its arguments.
    #[arg(
        value_name = "CONTAINER COMMAND [ARG...]",
        required = true,
        num_args = 2..,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub container_and_command: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait for the container to stop before killing it.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
    /// The signal to stop with (default: the image's STOPSIGNAL, else SIGTERM).
    #[arg(short = 's', long)]
    pub signal: Option<String>,
    /// Containers (names, ids or id prefixes).
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct KillArgs {
    /// The signal to send: a name (KILL, SIGKILL) or a number.
    #[arg(short = 's', long, default_value = "KILL")]
    pub signal: String,
    /// Containers (names, ids or id prefixes).
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// `kiln ps`.
pub fn run_ps(args: PsArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let containers = store
        .containers()
        .list(args.all)
        .context("listing containers")?;
    let now = unix_now();
    if args.quiet {
        for container in &containers {
            println!("{}", shown_id(&container.id, args.no_trunc));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = containers
        .iter()
        .map(|c| {
            let age = Duration::from_secs(now.saturating_sub(c.created));
            vec![
                shown_id(&c.id, args.no_trunc),
                c.image.clone(),
                shown_command(&c.command, args.no_trunc),
                format!("{} ago", human_duration(age)),
                if c.process.is_some() {
                    format!("Up {}", human_duration(age))
                } else {
                    "Created".to_string()
                },
                String::new(),
                c.name.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        render_table(
            &[
                "CONTAINER ID",
                "IMAGE",
                "COMMAND",
                "CREATED",
                "STATUS",
                "PORTS",
                "NAMES"
            ],
            &rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn shown_id(id: &str, no_trunc: bool) -> String {
    if no_trunc {
        id.to_string()
    } else {
        id.chars().take(12).collect()
    }
}

/// Docker's COMMAND column: the arguments joined and quoted, cut to 20 characters with "…".
fn shown_command(command: &[String], no_trunc: bool) -> String {
    let joined = command.join(" ");
    if no_trunc || joined.chars().count() <= 20 {
        format!("\"{joined}\"")
    } else {
        let cut: String = joined.chars().take(19).collect();
        format!("\"{cut}…\"")
    }
}

/// Finds a running container, with Docker's message when there is none.
fn find_running(containers: &Containers, key: &str) -> anyhow::Result<(ContainerState, i32)> {
    let state = containers.find(key)?;
    match state.process {
        Some(process) if process.is_alive() => Ok((state, process.pid)),
        _ => bail!("container {key} is not running"),
    }
}

/// `kiln exec`: the command's exit code, or 126/127 when it cannot be started.
pub fn run_exec(args: ExecArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let mut positional = args.container_and_command.into_iter();
    let key = positional.next().context("a container is required")?;
    let command: Vec<String> = positional.collect();
    let store = open_store(global)?;
    let (state, pid) = find_running(&store.containers(), &key)?;

    let mut env = state.env.clone();
    if args.tty {
        replace_or_append(&mut env, "TERM=xterm");
    }
    for entry in &args.env {
        match entry.split_once('=') {
            Some(("", _)) => bail!("invalid environment variable: {entry}"),
            Some(_) => replace_or_append(&mut env, entry),
            None => {
                if let Ok(value) = std::env::var(entry) {
                    replace_or_append(&mut env, &format!("{entry}={value}"));
                }
            }
        }
    }
    let cwd = args.workdir.unwrap_or_else(|| state.workdir.clone());
    if !cwd.starts_with('/') {
        bail!("the working directory {cwd:?} is invalid, it needs to be an absolute path");
    }
    let spec = EnterSpec {
        pid,
        args: command,
        env,
        user: args.user.unwrap_or_else(|| state.user.clone()),
        cwd,
        confinement: Confinement {
            capabilities: kiln_executor::CapabilitySet::from_bits(state.capabilities),
            privileged: state.privileged,
            seccomp: state.seccomp,
        },
        stdin: args.interactive,
        tty: args.tty,
    };
    let _raw_terminal = if args.tty && args.interactive {
        super::run::RawTerminal::enable()
    } else {
        None
    };
    let entered = match enter::enter(&spec) {
        Ok(entered) => entered,
        Err(error) => {
            let code = match &error {
                EnterError::CommandNotFound { .. } => EXIT_NOT_FOUND,
                EnterError::Setup { .. } => EXIT_CANNOT_EXECUTE,
                _ => 1,
            };
            drop(_raw_terminal);
            eprintln!("error: {error}");
            return Ok(ExitCode::from(code));
        }
    };
    let mut entered = entered;
    if let Some(terminal) = entered.terminal.take() {
        copy_window_size(&terminal);
        if args.interactive {
            let writer = terminal.try_clone().context("duplicating the terminal")?;
            // Detached: it ends with kiln when stdin never reaches EOF.
            std::thread::spawn(move || enter::relay(io::stdin(), writer));
        }
        enter::relay(terminal, io::stdout()).context("copying the terminal's output")?;
    }
    let status = entered.wait()?;
    Ok(ExitCode::from(u8::try_from(status.code()).unwrap_or(1)))
}

/// Copies the caller's terminal size to the pty, when the caller has a terminal.
fn copy_window_size(master: &std::fs::File) {
    if !io::stdin().is_terminal() {
        return;
    }
    // SAFETY: ioctls with a stack winsize on fds we hold.
    unsafe {
        let mut size: libc::winsize = std::mem::zeroed();
        if libc::ioctl(0, libc::TIOCGWINSZ, &mut size) == 0 {
            libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size);
        }
    }
}

fn replace_or_append(env: &mut Vec<String>, entry: &str) {
    let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_string();
    let wanted = key(entry);
    match env.iter_mut().find(|existing| key(existing) == wanted) {
        Some(existing) => *existing = entry.to_string(),
        None => env.push(entry.to_string()),
    }
}

/// Docker's signal syntax: a number, or a name with or without `SIG`, in any case.
fn parse_signal(text: &str) -> anyhow::Result<Signal> {
    if let Ok(number) = text.parse::<i32>() {
        return Signal::try_from(number).with_context(|| format!("invalid signal: {text}"));
    }
    let upper = text.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).with_context(|| format!("invalid signal: {text}"))
}

/// `kiln stop`: the stop signal, then SIGKILL after the timeout; waits until each container's
/// process is gone and prints each name as given, as Docker does.
pub fn run_stop(args: StopArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    let containers = store.containers();
    let requested = args.signal.as_deref().map(parse_signal).transpose()?;
    Ok(for_each_container(&args.containers, |key| {
        stop_one(&containers, key, requested, Duration::from_secs(args.time))
    }))
}

/// Runs `act` on each container named in `keys`, printing each name as given when it succeeds
/// and each error on stderr otherwise, as Docker does; a failure does not stop the others.
fn for_each_container(
    keys: &[String],
    mut act: impl FnMut(&str) -> anyhow::Result<()>,
) -> ExitCode {
    let mut failed = false;
    for key in keys {
        match act(key) {
            Ok(()) => println!("{key}"),
            Err(error) => {
                eprintln!("error: {error:#}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn stop_one(
    containers: &Containers,
    key: &str,
    requested: Option<Signal>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let (state, _) = find_running(containers, key)?;
    let Some(process) = state.process else {
        bail!("container {key} is not running");
    };
    let signal = match (requested, state.stop_signal.as_deref()) {
        (Some(signal), _) => signal,
        (None, Some(image_signal)) if !image_signal.is_empty() => parse_signal(image_signal)
            .with_context(|| format!("the image's STOPSIGNAL {image_signal:?}"))?,
        _ => Signal::SIGTERM,
    };
    send(process, signal)?;
    let deadline = std::time::Instant::now() + timeout;
    while process.is_alive() && std::time::Instant::now() < deadline {
        std::thread::sleep(POLL_INTERVAL);
    }
    if process.is_alive() {
        send(process, Signal::SIGKILL)?;
        // SIGKILL cannot be ignored: the wait ends once the kernel has torn the process down.
        while process.is_alive() {
            std::thread::sleep(POLL_INTERVAL);
        }
    }
    Ok(())
}

/// Signals the container's PID 1, making sure the pid still names it.
fn send(process: ProcessId, signal: Signal) -> anyhow::Result<()> {
    if !process.is_alive() {
        return Ok(());
    }
    match kill(Pid::from_raw(process.pid), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(errno) => {
            Err(errno).with_context(|| format!("sending {signal} to pid {}", process.pid))
        }
    }
}

/// `kiln kill`: sends the signal (default SIGKILL) and prints each name as given.
pub fn run_kill(args: KillArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let signal = parse_signal(&args.signal)?;
    let store = open_store(global)?;
    let containers = store.containers();
    Ok(for_each_container(&args.containers, |key| {
        find_running(&containers, key).and_then(|(state, _)| match state.process {
            Some(process) => send(process, signal),
            None => bail!("container {key} is not running"),
        })
    }))
}

/// What `kiln run` knows about its container before the sandbox starts.
pub(crate) struct NewContainer<'a> {
    pub id: &'a str,
    pub name: Option<&'a str>,
    pub image: &'a str,
    pub spec: &'a SandboxSpec,
    pub stop_signal: &'a str,
}

/// A container `kiln run` has registered; dropping it removes the entry.
pub(crate) struct TrackedContainer {
    registration: Registration,
}

impl TrackedContainer {
    /// Records the sandbox's PID 1 (from [`kiln_executor::SandboxIo::on_started`]): from then
    /// on `kiln ps` lists the container and `kiln exec` can enter it.
    pub(crate) fn record_started(&self, pid: i32) {
        match ProcessId::of(pid) {
            Ok(process) => {
                if let Err(error) = self.registration.set_process(process) {
                    tracing::warn!(%error, "could not record the container's process");
                }
            }
            Err(error) => tracing::debug!(%error, "the container's process ended early"),
        }
    }
}

/// Registers the container (with an automatic name when none is given); its PID 1 is recorded
/// with [`TrackedContainer::record_started`] once the sandbox has exec'd the command.
///
/// # Errors
/// Docker's name conflict error when a running container has the name; the registry's I/O errors.
pub(crate) fn track(store: &Store, new: NewContainer<'_>) -> anyhow::Result<TrackedContainer> {
    let containers = store.containers();
    let owner = ProcessId::current().context("reading this process's start time")?;
    let mut state = ContainerState {
        id: new.id.to_string(),
        name: String::new(),
        image: new.image.to_string(),
        command: new.spec.args.clone(),
        created: unix_now(),
        owner,
        process: None,
        env: new.spec.env.clone(),
        user: new.spec.user.clone(),
        workdir: new.spec.cwd.clone(),
        capabilities: new.spec.confinement.capabilities.bits(),
        privileged: new.spec.confinement.privileged,
        seccomp: new.spec.confinement.seccomp,
        stop_signal: (!new.stop_signal.is_empty()).then(|| new.stop_signal.to_string()),
    };
    let registration = match new.name {
        Some(name) => {
            state.name = name.to_string();
            containers.register(&state)?
        }
        None => register_with_generated_name(&containers, &mut state)?,
    };
    Ok(TrackedContainer { registration })
}

const ADJECTIVES: [&str; 16] = [
    "amber", "brave", "calm", "eager", "fervent", "gentle", "happy", "jolly", "keen", "lucid",
    "merry", "nimble", "quiet", "rapid", "sharp", "witty",
];
const SURNAMES: [&str; 16] = [
    "babbage", "curie", "darwin", "euler", "faraday", "gauss", "hopper", "kepler", "lovelace",
    "meitner", "newton", "noether", "pascal", "ritchie", "tesla", "turing",
];

/// Docker-style `adjective_surname` names from the id's bytes; on a clash, a digit is appended
/// (as Docker retries with one).
fn register_with_generated_name(
    containers: &Containers,
    state: &mut ContainerState,
) -> anyhow::Result<Registration> {
    let seed = u64::from_str_radix(&state.id[..16.min(state.id.len())], 16).unwrap_or(0);
    let base = generated_name(seed);
    let mut attempt = 0u64;
    loop {
        state.name = if attempt == 0 {
            base.clone()
        } else {
            format!("{base}{attempt}")
        };
        match containers.register(state) {
            Err(ContainerError::NameInUse { .. }) if attempt < 1000 => attempt += 1,
            other => return Ok(other?),
        }
    }
}

fn generated_name(seed: u64) -> String {
    let adjective = ADJECTIVES[(seed % 16) as usize];
    let surname = SURNAMES[((seed >> 4) % 16) as usize];
    format!("{adjective}_{surname}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_as_docker_writes_them() {
        assert_eq!(parse_signal("KILL").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("sigterm").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("SIGQUIT").unwrap(), Signal::SIGQUIT);
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("99").is_err());
    }

    #[test]
    fn ps_columns_follow_docker() {
        let id = "0123456789abcdef".repeat(4);
        assert_eq!(shown_id(&id, false), "0123456789ab");
        assert_eq!(shown_id(&id, true), id);
        let short = ["sleep".to_string(), "1000".to_string()];
        assert_eq!(shown_command(&short, false), "\"sleep 1000\"");
        let long: Vec<String> = ["sh", "-c", "while true; do sleep 1; done"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(shown_command(&long, false), "\"sh -c while true; d…\"");
        assert_eq!(
            shown_command(&long, true),
            "\"sh -c while true; do sleep 1; done\""
        );
    }

    #[test]
    fn generated_names_are_readable_and_clashes_get_a_digit() {
        let tmp = tempfile::tempdir().unwrap();
        let containers = Containers::new(tmp.path());
        let me = ProcessId::current().unwrap();
        let mut state = ContainerState {
            id: "a".repeat(64),
            name: String::new(),
            image: "busybox".into(),
            command: vec!["sh".into()],
            created: 0,
            owner: me,
            process: None,
            env: Vec::new(),
            user: String::new(),
            workdir: "/".into(),
            capabilities: 0,
            privileged: false,
            seccomp: true,
            stop_signal: None,
        };
        let _first = register_with_generated_name(&containers, &mut state).unwrap();
        let first_name = state.name.clone();
        assert!(first_name.contains('_'), "{first_name}");
        state.id = format!("{}b", "a".repeat(63));
        let _second = register_with_generated_name(&containers, &mut state).unwrap();
        assert_eq!(state.name, format!("{first_name}1"));
    }

    #[test]
    fn exec_env_entries_replace_in_place() {
        let mut env = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        replace_or_append(&mut env, "A=2");
        replace_or_append(&mut env, "B=3");
        assert_eq!(env, ["PATH=/bin", "A=2", "B=3"]);
    }
}

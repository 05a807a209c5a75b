//! `kiln pull`, `push`, `login` and `logout`: images between the store and registries, with
//! Docker's credentials (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`, so `docker
//! login` and `kiln login` share them) and Docker's output lines.
//!
//! Registries on loopback addresses are spoken to over plain HTTP; others only when named with
//! `--insecure-registry`. A pull holds the store's shared lock from the first blob to the tag, so a
//! concurrent prune never deletes what it is adding. A push offers the registry the other
//! repositories on the same registry that hold the same image, so it can mount blobs instead of
//! receiving them again.

use std::io::{self, BufRead as _, IsTerminal as _, Read as _, Write as _};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use kiln_image::{Digest, Platform, Reference};
use kiln_registry::credentials::{Credentials, CredentialsError, DockerConfig};
use kiln_registry::{
    ClientOptions, CredentialSource, RegistryClient, Repository, TransferEvent, WantedPlatform,
};
use kiln_store::Store;

use super::images::{find_image, short_id};
use super::open_store;
use crate::cli::Global;

#[derive(clap::Args, Debug)]
pub struct PullArgs {
    /// The platform to pull from a multi-platform image (`os/arch[/variant]`; default: this
    /// machine's).
    #[arg(long)]
    pub platform: Option<String>,
    /// A registry to reach over plain HTTP (loopback registries always are); repeatable. Adds to
    /// the comma-separated list in KILN_INSECURE_REGISTRIES, which `kiln build` reads too.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// Print only the image name at the end.
    #[arg(short, long)]
    pub quiet: bool,
    /// The image, e.g. `busybox`, `busybox:1.36`, `registry:5000/app@sha256:…`.
    #[arg(value_name = "NAME[:TAG|@DIGEST]")]
    pub name: String,
}

#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// A registry to reach over plain HTTP (loopback registries always are); repeatable. Adds to
    /// the comma-separated list in KILN_INSECURE_REGISTRIES, which `kiln build` reads too.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// Print only errors and the digest line.
    #[arg(short, long)]
    pub quiet: bool,
    /// Push every local tag of the repository NAME.
    #[arg(short, long)]
    pub all_tags: bool,
    /// The local image: a name or an image id.
    #[arg(value_name = "NAME[:TAG]")]
    pub name: String,
    /// Where to push it (default: NAME itself).
    #[arg(value_name = "DEST[:TAG]")]
    pub destination: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct LoginArgs {
    /// The user name.
    #[arg(short, long)]
    pub username: Option<String>,
    /// The password (prefer --password-stdin: command lines are visible to other users).
    #[arg(short, long, conflicts_with = "password_stdin")]
    pub password: Option<String>,
    /// Read the password from stdin.
    #[arg(long)]
    pub password_stdin: bool,
    /// A registry to reach over plain HTTP (loopback registries always are); repeatable. Adds to
    /// the comma-separated list in KILN_INSECURE_REGISTRIES, which `kiln build` reads too.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// The registry (default: Docker Hub).
    #[arg(value_name = "SERVER")]
    pub server: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct LogoutArgs {
    /// The registry (default: Docker Hub).
    #[arg(value_name = "SERVER")]
    pub server: Option<String>,
}

/// One set of credentials for whichever registry asks: what `login` checks before storing them.
struct GivenCredentials(Credentials);

impl CredentialSource for GivenCredentials {
    fn credentials_for(&self, _registry: &str) -> Result<Option<Credentials>, CredentialsError> {
        Ok(Some(self.0.clone()))
    }
}

fn client(
    credentials: Arc<dyn CredentialSource>,
    insecure_registries: &[String],
) -> anyhow::Result<RegistryClient> {
    // The flags add to the registries KILN_INSECURE_REGISTRIES names.
    let mut options = ClientOptions::from_env();
    options
        .insecure_registries
        .extend(insecure_registries.iter().cloned());
    RegistryClient::new(credentials, options).context("setting up the registry client")
}

fn docker_config() -> anyhow::Result<DockerConfig> {
    let path = DockerConfig::default_path();
    DockerConfig::load(&path).with_context(|| format!("reading {}", path.display()))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn repository_of(reference: &Reference) -> Repository {
    Repository::from(reference)
}

/// Prints one progress line per blob event, as Docker's non-terminal output does.
fn print_event(line: String) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

pub fn run_pull(args: PullArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let reference = Reference::parse(&args.name)
        .with_context(|| format!("invalid image name {:?}", args.name))?
        .with_default_tag();
    let platform = match &args.platform {
        Some(text) => {
            Platform::parse(text).with_context(|| format!("invalid platform {text:?}"))?
        }
        None => Platform::host(),
    };
    let wanted = WantedPlatform {
        os: platform.os.clone(),
        architecture: platform.architecture.clone(),
        variant: platform.variant.clone(),
    };
    let name = reference.to_string();
    let repo = repository_of(&reference);
    let store = open_store(global)?;
    let _lock = store.lock_shared().context("locking the store")?;
    let credentials: Arc<dyn CredentialSource> = Arc::new(docker_config()?);
    let client = client(credentials, &args.insecure_registries)?;
    let previous = store
        .resolve_image(&name)
        .context("looking up the current image")?
        .filter(|r| r.name == name);

    if !args.quiet {
        print_event(format!(
            "{}: Pulling from {}",
            reference.tag_or_digest(),
            reference.repository()
        ));
    }
    let quiet = args.quiet;
    let progress = move |event: TransferEvent| {
        if quiet {
            return;
        }
        match event {
            TransferEvent::Resolved { .. } | TransferEvent::Mounted { .. } => {}
            TransferEvent::Skipped { digest } => {
                print_event(format!("{}: Already exists", short_id(&digest)));
            }
            TransferEvent::Started { digest, .. } => {
                print_event(format!("{}: Pulling fs layer", short_id(&digest)));
            }
            TransferEvent::Done { digest, .. } => {
                print_event(format!("{}: Pull complete", short_id(&digest)));
            }
        }
    };
    let pulled = runtime()?
        .block_on(kiln_registry::pull(
            &client,
            &store,
            &repo,
            &reference.tag_or_digest(),
            &wanted,
            &progress,
        ))
        .with_context(|| format!("pulling {}", reference.familiar()))?;
    store
        .tag(
            &name,
            &pulled.manifest.digest,
            &pulled.manifest.config_digest,
        )
        .with_context(|| format!("tagging {}", reference.familiar()))?;
    if !args.quiet {
        let digest = pulled
            .index_digest
            .as_ref()
            .unwrap_or(&pulled.manifest.digest);
        println!("Digest: {digest}");
        let up_to_date = previous.is_some_and(|p| p.manifest_digest == pulled.manifest.digest);
        if up_to_date {
            println!("Status: Image is up to date for {}", reference.familiar());
        } else {
            println!(
                "Status: Downloaded newer image for {}",
                reference.familiar()
            );
        }
    }
    println!("{name}");
    Ok(ExitCode::SUCCESS)
}

/// Pushes the stored image with manifest `manifest_digest` to `destination` (which has a tag),
/// printing Docker's lines (the last one names the pushed manifest digest).
fn push_one(
    store: &Store,
    client: &RegistryClient,
    runtime: &tokio::runtime::Runtime,
    manifest_digest: &Digest,
    destination: &Reference,
    quiet: bool,
) -> anyhow::Result<()> {
    let repo = repository_of(destination);
    let tag = destination.tag_or_latest().to_string();

    // Other repositories of the same registry that hold this image can lend their blobs.
    let mut mount_from: Vec<Repository> = Vec::new();
    for record in store.list_images().context("listing images")? {
        if record.manifest_digest != *manifest_digest {
            continue;
        }
        if let Ok(other) = Reference::parse(&record.name) {
            let other = repository_of(&other);
            if other.registry == repo.registry
                && other.name != repo.name
                && !mount_from.contains(&other)
            {
                mount_from.push(other);
            }
        }
    }
    let mounted_from = match mount_from.as_slice() {
        [only] => only.name.clone(),
        _ => "another repository".to_string(),
    };
    let progress = move |event: TransferEvent| {
        if quiet {
            return;
        }
        match event {
            TransferEvent::Resolved { .. } => {}
            TransferEvent::Skipped { digest } => {
                print_event(format!("{}: Layer already exists", short_id(&digest)));
            }
            TransferEvent::Mounted { digest } => {
                print_event(format!(
                    "{}: Mounted from {mounted_from}",
                    short_id(&digest)
                ));
            }
            TransferEvent::Started { digest, .. } => {
                print_event(format!("{}: Pushing", short_id(&digest)));
            }
            TransferEvent::Done { digest, .. } => {
                print_event(format!("{}: Pushed", short_id(&digest)));
            }
        }
    };
    let pushed: Digest = runtime
        .block_on(kiln_registry::push(
            client,
            store,
            manifest_digest,
            &repo,
            &tag,
            &mount_from,
            &progress,
        ))
        .with_context(|| format!("pushing {}", destination.familiar()))?;
    let size = store
        .blob_size(&pushed)
        .with_context(|| format!("finding manifest {pushed}"))?;
    print_event(format!("{tag}: digest: {pushed} size: {size}"));
    Ok(())
}

pub fn run_push(args: PushArgs, global: &Global) -> anyhow::Result<ExitCode> {
    let store = open_store(global)?;
    // (manifest to push, where to push it)
    let mut pushes: Vec<(Digest, Reference)> = Vec::new();
    if args.all_tags {
        if args.destination.is_some() {
            bail!("--all-tags pushes the local tags under their own names: give no DEST");
        }
        let repository = Reference::parse(&args.name)
            .with_context(|| format!("invalid repository {:?}", args.name))?;
        if repository.tag().is_some() || repository.digest().is_some() {
            bail!("--all-tags takes a repository without a tag: {}", args.name);
        }
        for record in store.list_images().context("listing images")? {
            if let Ok(reference) = Reference::parse(&record.name)
                && reference.name() == repository.name()
                && reference.tag().is_some()
                && reference.digest().is_none()
            {
                pushes.push((record.manifest_digest, reference));
            }
        }
        if pushes.is_empty() {
            bail!(
                "An image does not exist locally with the tag: {}",
                args.name
            );
        }
    } else {
        let source = find_image(&store, &args.name)?.with_context(|| {
            format!(
                "An image does not exist locally with the tag: {}",
                args.name
            )
        })?;
        let destination_text = args.destination.as_deref().unwrap_or(&args.name);
        let destination = Reference::parse(destination_text)
            .with_context(|| format!("invalid destination {destination_text:?}"))?;
        if destination.digest().is_some() {
            bail!("cannot push to a digest reference ({destination_text}): name a tag");
        }
        pushes.push((
            source.record.manifest_digest,
            destination.with_default_tag(),
        ));
    }

    let credentials: Arc<dyn CredentialSource> = Arc::new(docker_config()?);
    let client = client(credentials, &args.insecure_registries)?;
    let runtime = runtime()?;
    // Held through the uploads: a prune must not delete blobs while they are read.
    let _lock = store.lock_shared().context("locking the store")?;
    let mut announced = Vec::new();
    for (manifest_digest, destination) in &pushes {
        let repository = destination.name();
        if !args.quiet && !announced.contains(&repository) {
            print_event(format!("The push refers to repository [{repository}]"));
            announced.push(repository);
        }
        push_one(
            &store,
            &client,
            &runtime,
            manifest_digest,
            destination,
            args.quiet,
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The registry host a login names: `https://host:5000/v2/` → `host:5000`; Docker Hub's many
/// spellings (and none) → `docker.io`.
fn registry_host(server: Option<&str>) -> String {
    let Some(server) = server.map(str::trim).filter(|s| !s.is_empty()) else {
        return "docker.io".to_string();
    };
    let without_scheme = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))
        .unwrap_or(server);
    let host = without_scheme.split('/').next().unwrap_or(without_scheme);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => "docker.io".to_string(),
        other => other.to_string(),
    }
}

/// Reads a line from the terminal with echo off, for the password prompt.
fn read_hidden_line() -> anyhow::Result<String> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = io::stdin();
    let saved = tcgetattr(&stdin).context("reading the terminal settings")?;
    let mut silent = saved.clone();
    silent.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&stdin, SetArg::TCSANOW, &silent).context("turning off echo")?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let restored = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    eprintln!();
    read.context("reading the password")?;
    restored.context("restoring the terminal settings")?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// The credentials `login` was given: flags, stdin, or prompts on a terminal.
fn login_credentials(args: &LoginArgs, registry: &str) -> anyhow::Result<Credentials> {
    let interactive = io::stdin().is_terminal();
    let username = match &args.username {
        Some(user) => user.clone(),
        None if interactive && !args.password_stdin => {
            eprint!("Username for {registry}: ");
            let mut line = String::new();
            io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the user name")?;
            line.trim().to_string()
        }
        None => bail!("a user name is required: pass -u USER"),
    };
    if username.is_empty() {
        bail!("a user name is required: pass -u USER");
    }
    let password = if let Some(password) = &args.password {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
        password.clone()
    } else if args.password_stdin {
        let mut text = String::new();
        io::stdin()
            .read_to_string(&mut text)
            .context("reading the password from stdin")?;
        text.trim_end_matches(['\r', '\n']).to_string()
    } else if interactive {
        eprint!("Password: ");
        read_hidden_line()?
    } else {
        bail!("a password is required: pass --password-stdin (or -p PASSWORD)");
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(Credentials {
        username,
        secret: password,
    })
}

pub fn run_login(args: LoginArgs, _global: &Global) -> anyhow::Result<ExitCode> {
    let registry = registry_host(args.server.as_deref());
    let credentials = login_credentials(&args, &registry)?;
    let checker = client(
        Arc::new(GivenCredentials(credentials.clone())),
        &args.insecure_registries,
    )?;
    runtime()?
        .block_on(checker.ping(&registry))
        .with_context(|| format!("login to {registry} failed"))?;
    let mut config = docker_config()?;
    config
        .store_credentials(&registry, &credentials)
        .with_context(|| format!("saving the credentials in {}", config.path().display()))?;
    println!("Login Succeeded");
    Ok(ExitCode::SUCCESS)
}

pub fn run_logout(args: LogoutArgs, _global: &Global) -> anyhow::Result<ExitCode> {
    let registry = registry_host(args.server.as_deref());
    let mut config = docker_config()?;
    let removed = config
        .erase_credentials(&registry)
        .with_context(|| format!("removing the credentials from {}", config.path().display()))?;
    if removed {
        println!("Removing login credentials for {registry}");
    } else {
        println!("Not logged in to {registry}");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_servers_normalise_to_registry_hosts() {
        assert_eq!(registry_host(None), "docker.io");
        assert_eq!(
            registry_host(Some("https://index.docker.io/v1/")),
            "docker.io"
        );
        assert_eq!(registry_host(Some("127.0.0.1:5000")), "127.0.0.1:5000");
        assert_eq!(
            registry_host(Some("http://registry.local:5000/v2/")),
            "registry.local:5000"
        );
    }
}

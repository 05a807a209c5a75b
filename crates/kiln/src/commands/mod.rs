//! One module per group of commands; `dispatch` routes a parsed command line to it. Helpers every
//! command shares (opening the store, normalising image names) live here.

pub mod archive;
pub mod build;
pub mod containers;
pub mod debug;
pub mod images;
pub mod registry;
pub mod run;

use std::process::ExitCode;

use anyhow::Context as _;
use kiln_image::Reference;
use kiln_store::Store;

use crate::cli::{Cli, Command, Global};

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let global = cli.global;
    match cli.command {
        Command::Build(args) => build::run(args, &global),
        Command::Run(args) => run::run(args, &global),
        Command::Ps(args) => containers::run_ps(args, &global),
        Command::Exec(args) => containers::run_exec(args, &global),
        Command::Stop(args) => containers::run_stop(args, &global),
        Command::Kill(args) => containers::run_kill(args, &global),
        Command::Images(args) => images::run_images(args, &global),
        Command::Tag(args) => images::run_tag(args, &global),
        Command::Rmi(args) => images::run_rmi(args, &global),
        Command::Inspect(args) => images::run_inspect(args, &global),
        Command::History(args) => images::run_history(args, &global),
        Command::Prune(args) => images::run_prune(args, &global),
        Command::Save(args) => archive::run_save(args, &global),
        Command::Load(args) => archive::run_load(args, &global),
        Command::Pull(args) => registry::run_pull(args, &global),
        Command::Push(args) => registry::run_push(args, &global),
        Command::Login(args) => registry::run_login(args, &global),
        Command::Logout(args) => registry::run_logout(args, &global),
        Command::Debug(command) => debug::run(command, &global),
    }
}

/// Opens the store at `--root`, `KILN_ROOT` or the default root.
pub fn open_store(global: &Global) -> anyhow::Result<Store> {
    let root =
        kiln_store::resolve_root(global.root.as_deref()).context("choosing the store root")?;
    Store::open(&root).with_context(|| format!("opening the store at {}", root.display()))
}

/// The store's name for an image reference: Docker's normalised full form with a default tag
/// (`busybox` → `docker.io/library/busybox:latest`).
pub fn normalize_image_name(name: &str) -> anyhow::Result<String> {
    let reference =
        Reference::parse(name).with_context(|| format!("invalid image name {name:?}"))?;
    Ok(reference.with_default_tag().to_string())
}

/// The platform kiln runs on, in the op vocabulary's terms.
pub fn host_platform() -> kiln_llb::Platform {
    let host = kiln_image::Platform::host();
    kiln_llb::Platform {
        os: host.os,
        architecture: host.architecture,
        variant: host.variant,
    }
}

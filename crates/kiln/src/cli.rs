//! Command-line arguments as clap parses them: dumb data, validated and turned into typed options by
//! each command (ripgrep's low-args/high-args split). Each command module owns its `Args` struct.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::commands::{archive, build, containers, debug, images, registry, run};

#[derive(Parser, Debug)]
#[command(name = "kiln", version, about = "A daemonless container image builder")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,

    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Global {
    /// Where kiln keeps blobs, layers and its metadata (default: /var/lib/kiln as root,
    /// $XDG_DATA_HOME/kiln otherwise).
    #[arg(long, global = true, env = "KILN_ROOT")]
    pub root: Option<PathBuf>,

    /// Log debugging detail to stderr (or set KILN_LOG=debug).
    #[arg(long, global = true)]
    pub debug: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Build an image from a Dockerfile and a context.
    Build(build::BuildArgs),
    /// Run a command in a new container from an image.
    Run(run::RunArgs),
    /// List running containers.
    Ps(containers::PsArgs),
    /// Run a command in a running container.
    Exec(containers::ExecArgs),
    /// Stop running containers (the stop signal, then SIGKILL after a timeout).
    Stop(containers::StopArgs),
    /// Send a signal to running containers.
    Kill(containers::KillArgs),
    /// List images.
    Images(images::ImagesArgs),
    /// Give an image another name.
    Tag(images::TagArgs),
    /// Remove image names.
    Rmi(images::RmiArgs),
    /// Show an image's details as JSON (the shape of `docker image inspect`).
    Inspect(images::InspectArgs),
    /// Show how an image's layers were made.
    History(images::HistoryArgs),
    /// Remove what no image, cache record or running build references.
    Prune(images::PruneArgs),
    /// Write images to a docker archive (what `docker save` writes).
    Save(archive::SaveArgs),
    /// Load images from a docker archive or an OCI layout tar.
    Load(archive::LoadArgs),
    /// Download an image from a registry.
    Pull(registry::PullArgs),
    /// Upload an image to a registry.
    Push(registry::PushArgs),
    /// Store credentials for a registry (in Docker's config.json).
    Login(registry::LoginArgs),
    /// Remove stored credentials for a registry.
    Logout(registry::LogoutArgs),
    /// Tools for looking inside kiln: the parsed Dockerfile, the build graph.
    #[command(subcommand)]
    Debug(debug::DebugCommand),
}

//! Command-line arguments as clap parses them: dumb data, validated and turned into typed options by
//! each command (ripgrep's low-args/high-args split).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "kiln", version, about = "A daemonless container image builder")]
pub struct Cli {
    /// Where kiln keeps blobs, layers and its metadata (default: /var/lib/kiln as root,
    /// $XDG_DATA_HOME/kiln otherwise).
    #[arg(long, global = true, env = "KILN_ROOT")]
    pub root: Option<PathBuf>,

    /// Log debugging detail to stderr (or set KILN_LOG=debug).
    #[arg(long, global = true)]
    pub debug: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Tools for looking inside kiln: the parsed Dockerfile, the build graph.
    #[command(subcommand)]
    Debug(DebugCommand),
}

#[derive(Subcommand, Debug)]
pub enum DebugCommand {
    /// Print a Dockerfile's syntax tree (BuildKit's AST dump format).
    Parse {
        /// The Dockerfile (`-` for stdin).
        file: PathBuf,
    },
}

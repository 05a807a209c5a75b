//! `kiln debug parse` and `kiln debug llb`: the frontend's views of a Dockerfile, for users and for
//! the conformance tests.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::Subcommand;
use kiln_frontend::lower::{LowerOptions, OfflineResolver};

use crate::cli::Global;

#[derive(Subcommand, Debug)]
pub enum DebugCommand {
    /// Print a Dockerfile's syntax tree (BuildKit's AST dump format).
    Parse {
        /// The Dockerfile (`-` for stdin).
        file: PathBuf,
    },
    /// Print the build graph (ops and their inputs) and each stage's image config.
    Llb(LlbArgs),
}

#[derive(clap::Args, Debug)]
pub struct LlbArgs {
    /// The Dockerfile (default: CONTEXT/Dockerfile; `-` for stdin).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// The stage to build (default: the last).
    #[arg(long)]
    pub target: Option<String>,
    /// A build argument, `KEY=VALUE` (or `KEY` to take it from the environment).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    pub build_args: Vec<String>,
    /// Treat base images as empty images instead of looking them up.
    #[arg(long)]
    pub offline: bool,
    /// The build context directory.
    pub context: PathBuf,
}

pub fn run(command: DebugCommand, global: &Global) -> anyhow::Result<ExitCode> {
    match command {
        DebugCommand::Parse { file } => {
            let source = read_dockerfile(&file)?;
            let ast = kiln_frontend::parser::parse_ast(&source)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            println!("{}", kiln_frontend::parser::dump(&ast));
            Ok(ExitCode::SUCCESS)
        }
        DebugCommand::Llb(args) => {
            let dockerfile_path = args
                .file
                .clone()
                .unwrap_or_else(|| args.context.join("Dockerfile"));
            let source = read_dockerfile(&dockerfile_path)?;
            let name = dockerfile_path.display().to_string();
            let dockerfile = kiln_frontend::parser::parse_dockerfile(&source, &name)?;
            let mut options = LowerOptions::new(crate::commands::host_platform());
            options.target = args.target.clone();
            options.build_args = parse_build_args(&args.build_args)?;
            options.dockerfile_name = name;
            let lowered = if args.offline {
                kiln_frontend::lower::lower(&dockerfile, &options, &OfflineResolver)?
            } else {
                let resolver =
                    crate::resolver::StoreResolver::new(crate::commands::open_store(global)?);
                kiln_frontend::lower::lower(&dockerfile, &options, &resolver)?
            };
            for warning in &lowered.warnings {
                eprintln!("warning: {}", warning.message);
            }
            print!("{}", lowered.to_text());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `--build-arg` values: `KEY=VALUE`, or `KEY` alone to take the value from kiln's environment
/// (skipped when unset), as `docker build` does.
pub fn parse_build_args(values: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut args = BTreeMap::new();
    for value in values {
        match value.split_once('=') {
            Some(("", _)) => bail!("invalid --build-arg {value:?}: the name is empty"),
            Some((key, val)) => {
                args.insert(key.to_string(), val.to_string());
            }
            None => {
                if let Ok(val) = std::env::var(value) {
                    args.insert(value.clone(), val);
                }
            }
        }
    }
    Ok(args)
}

/// Reads a Dockerfile from a path, or from stdin for `-`.
pub fn read_dockerfile(path: &Path) -> anyhow::Result<String> {
    if path == Path::new("-") {
        let mut source = String::new();
        std::io::stdin()
            .read_to_string(&mut source)
            .context("reading the Dockerfile from stdin")?;
        Ok(source)
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("reading the Dockerfile {}", path.display()))
    }
}

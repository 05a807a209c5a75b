//! `kiln debug parse` and `kiln debug llb`: the frontend's views of a Dockerfile, for users and for
//! the conformance tests.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::cli::DebugCommand;

pub fn run(command: DebugCommand) -> anyhow::Result<ExitCode> {
    match command {
        DebugCommand::Parse { file } => {
            let source = read_dockerfile(&file)?;
            let ast = kiln_frontend::parser::parse_ast(&source)
                .with_context(|| format!("parsing {}", file.display()))?;
            println!("{}", kiln_frontend::parser::dump(&ast));
            Ok(ExitCode::SUCCESS)
        }
    }
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
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

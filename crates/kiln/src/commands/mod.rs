//! One module per command; `dispatch` routes a parsed command line to it.

mod debug;

use std::process::ExitCode;

use crate::cli::{Cli, Command};

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Debug(command) => debug::run(command),
    }
}

//! The `kiln` command line: parses arguments, wires the library crates together and reports errors
//! with their context (file:line, the failing step, a hint).

use clap::Parser;

#[derive(Parser)]
#[command(name = "kiln", version, about = "A daemonless container image builder")]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}

//! The `kiln` command line: parses arguments, wires the library crates together and reports errors
//! with their context (file:line, the failing step, a hint). Exit codes: 0 success, 1 a failed
//! command, 2 a usage error (clap's), and a container's own code for `kiln run`.

mod build_inputs;
mod cli;
mod commands;
mod metadata_file;
mod oci_layout_context;
mod output_spec;
mod progress;
mod resolver;
mod run_platform;
mod ssh_agent;
mod store_blobs;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    init_logging(cli.global.debug);
    raise_open_file_limit();
    match commands::dispatch(cli) {
        Ok(code) => code,
        Err(error) => {
            report(&error);
            ExitCode::FAILURE
        }
    }
}

fn init_logging(debug: bool) {
    let default = if debug { "debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .init();
}

/// Copies and layer walks hold a descriptor per directory level and the solver runs several at
/// once; the default soft limit (1024) is too low for deep trees, so raise it to the hard limit
/// (as Go programs like BuildKit do at start-up). Failure leaves the limit as it was.
fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed in.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::debug!("could not raise the open file limit");
            }
        }
    }
}

/// Prints an error and its causes, one per line, the way users read them: what failed, then why.
fn report(error: &anyhow::Error) {
    eprintln!("error: {error}");
    for cause in error.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

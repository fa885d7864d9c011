//! The `sliceproxy` command: parses the command line and dispatches to the
//! agent or a tool (`sliceproxy::cli`).
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use sliceproxy::cli::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a pod's log (kubectl logs) or a file
        // gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    match cli.command {
        Some(Command::Render(args)) => cli::render::run(args),
        Some(Command::Diagnose(args)) => cli::diagnose::run(args),
        None => cli::agent(cli.flags),
    }
}

//! `sandboxd`: the lifecycle orchestrator. Parses the command line, sets up logging, serves.

use std::process::ExitCode;

use clap::Parser;
use execd::orchestrator::{Cli, Command};
use tracing::Level;
use tracing_subscriber::filter::{filter_fn, Targets};
use tracing_subscriber::prelude::*;

fn main() -> ExitCode {
    let Cli { command } = Cli::parse();
    let Command::Serve(config) = command;
    let filter: Targets = match std::env::var("RUST_LOG").ok().map(|s| s.parse::<Targets>()) {
        Some(Ok(filter)) => filter,
        _ => match config.log_level.parse() {
            Ok(filter) => filter,
            Err(e) => {
                eprintln!("sandboxd: --log-level: {e}");
                return ExitCode::from(2);
            }
        },
    };
    // The Docker client traces request bodies, which carry each sandbox's access token in
    // its environment: never let those lines out, whatever the filter asks for.
    let no_secrets =
        filter_fn(|meta| !(meta.target().starts_with("bollard") && *meta.level() == Level::TRACE));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(filter)
                .with_filter(no_secrets),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sandboxd: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(execd::orchestrator::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandboxd: {e:#}");
            ExitCode::from(1)
        }
    }
}

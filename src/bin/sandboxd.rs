//! `sandboxd`: the lifecycle orchestrator. Parses the command line; `serve` sets up logging
//! and serves, every other subcommand is a client of a running sandboxd (`execd::cli`).

use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser};
use execd::logging::{self, Sink};
use execd::orchestrator::lifecycle_log::LifecycleLogs;
use execd::orchestrator::{Cli, Command};
use tracing::Level;
use tracing_subscriber::filter::{filter_fn, Targets};

fn main() -> ExitCode {
    let Cli { command } = Cli::parse();
    let config = match command {
        Command::Serve(config) => config,
        Command::Client(command) => return execd::cli::run(command, Cli::command),
    };
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
    // sandboxd's own lines about each sandbox, for its `lifecycle` logs diagnostic.
    let lifecycle = Arc::new(LifecycleLogs::default());
    let extra: logging::Extra = Box::new(lifecycle.layer());
    if let Err(e) = logging::init(config.log_format, Sink::Stderr, filter, no_secrets, vec![extra]) {
        eprintln!("sandboxd: cannot set up logging: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sandboxd: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(execd::orchestrator::serve(config, lifecycle)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sandboxd: {e:#}");
            ExitCode::from(1)
        }
    }
}

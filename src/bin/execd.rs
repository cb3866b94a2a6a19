//! `execd`: parse the configuration, set up logging, and run the agent.

use std::process::ExitCode;

use clap::Parser;
use execd::agent::config::{Cli, Mode};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli.config) {
        eprintln!("execd: {e:#}");
        return ExitCode::from(2);
    }
    let entrypoint = match cli.mode {
        Some(Mode::Init { entrypoint }) => Some(entrypoint),
        None => cli.init_argv,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("execd: cannot start runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(execd::agent::serve(cli.config, entrypoint)) {
        Ok(code) => {
            // Pump threads may still be blocked on pipes of killed processes; don't wait.
            runtime.shutdown_background();
            ExitCode::from(code.clamp(0, 255) as u8)
        }
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("execd: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(config: &execd::agent::Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new(&config.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match &config.log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
            builder
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .init();
        }
        None => builder.with_writer(std::io::stderr).init(),
    }
    Ok(())
}

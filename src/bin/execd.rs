//! `execd`: parse the configuration, set up logging, and run the agent.

use std::process::ExitCode;

use clap::Parser;
use execd::agent::config::{Cli, Mode};
use execd::logging::{self, Sink};
use tracing_subscriber::filter::{filter_fn, Targets};

/// Cap of the runtime's blocking pool: it also runs one output pump per running foreground
/// command (execd::agent::output), for as long as the command runs.
const MAX_BLOCKING_THREADS: usize = 8192;

fn main() -> ExitCode {
    // The jail of an isolated session: execd re-executed by itself, before any other setup.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == execd::agent::isolate::JAIL_ARG)
    {
        return ExitCode::from(execd::agent::isolate::jail::main().clamp(0, 255) as u8);
    }
    let cli = Cli::parse();
    let entrypoint = match cli.mode {
        Some(Mode::Install { dir }) => return install(&dir),
        Some(Mode::Init { entrypoint }) => Some(entrypoint),
        None => cli.init_argv,
    };
    if let Err(e) = init_logging(&cli.config) {
        eprintln!("execd: {e:#}");
        return ExitCode::from(2);
    }
    // Init's seed files go in place before the runtime, the API or the entrypoint starts.
    if let (Some(manifest), Some(_)) = (&cli.config.seed_files, &entrypoint) {
        if let Err(e) = execd::agent::seed::place_all(manifest) {
            eprintln!("execd: {e}");
            return ExitCode::from(1);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
    {
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

/// `execd install DIR`: no runtime, no logging set-up; one line on success.
fn install(dir: &std::path::Path) -> ExitCode {
    let this = std::path::Path::new(execd::agent::SELF_EXE);
    match execd::agent::install::install(this, dir) {
        Ok(target) => {
            println!("installed {}", target.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("execd: install into {}: {e}", dir.display());
            ExitCode::from(1)
        }
    }
}

fn init_logging(config: &execd::agent::Config) -> anyhow::Result<()> {
    // RUST_LOG wins over --log-level when it parses; both are `level` or `target=level,...`.
    // A `Targets` filter rather than `EnvFilter`, whose regex engine would cost the agent
    // about 400 KB of its 5 MB budget.
    let filter: Targets = match std::env::var("RUST_LOG").ok().map(|s| s.parse::<Targets>()) {
        Some(Ok(filter)) => filter,
        _ => config.log_level.parse()?,
    };
    if let Some(path) = &config.log_file {
        // A log file that cannot be written (a read-only or odd image) must not keep the
        // agent from starting: say so and log to stderr instead.
        match logging::init(
            config.log_format,
            Sink::File(path),
            filter.clone(),
            filter_fn(|_| true),
            Vec::new(),
        ) {
            Ok(()) => return Ok(()),
            Err(e) => eprintln!("execd: cannot log to {} ({e}); logging to stderr", path.display()),
        }
    }
    logging::init(
        config.log_format,
        Sink::Stderr,
        filter,
        filter_fn(|_| true),
        Vec::new(),
    )?;
    Ok(())
}

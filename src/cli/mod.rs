//! `sandboxd`'s client subcommands: `ls`, `create`, `get`, `rm`, `logs`, `events`, `exec`,
//! `cp`, `pause`, `resume`, `run`, `template`, `pool`, `prepull`, `token`, `completion`. Each one is a few HTTP calls to a running
//! sandboxd (and, through its server proxy, to a sandbox's execd), printed for a person or as
//! JSON/YAML for a script.
//!
//! Owns: the command line of the client side, credentials resolution (`connect.rs`), the
//! HTTP/WebSocket calls and what is printed. Must not know sandboxd's internals: it speaks
//! only the wire types (`crate::wire`), never `crate::orchestrator`. Async on a small tokio
//! runtime of its own, except the terminal's stdin reader (a thread: stdin blocks).

mod client;
mod connect;
mod copy;
mod error;
mod exec;
mod output;
mod pools;
mod prepull;
mod run;
mod sandboxes;
mod templates;
mod terminal;
mod tokens;

use std::process::ExitCode;

use clap::Subcommand;

pub use error::CliError;

/// The client subcommands, flattened into `sandboxd`'s own subcommands beside `serve`.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// List sandboxes, newest first.
    #[command(visible_alias = "list")]
    Ls(sandboxes::LsArgs),
    /// Create a sandbox from an image or a template; waits until its execd answers, then
    /// prints its id.
    Create(sandboxes::CreateArgs),
    /// Show sandboxes in detail.
    #[command(visible_alias = "inspect")]
    Get(sandboxes::GetArgs),
    /// Delete sandboxes (kill and remove their containers).
    #[command(visible_alias = "delete")]
    Rm(sandboxes::IdsArgs),
    /// Print a sandbox's output (its container's stdout and stderr).
    Logs(sandboxes::LogsArgs),
    /// Print sandboxd's event log for a sandbox (created, paused, expired, ...).
    Events(sandboxes::LogsArgs),
    /// Run a command in a sandbox (`exec ID -- ARGV...`), or open a terminal (`exec -it ID`).
    Exec(exec::ExecArgs),
    /// Copy a file into or out of a sandbox: `cp ./f ID:/path` or `cp ID:/path ./f`.
    Cp(copy::CpArgs),
    /// Pause sandboxes (freeze every process; the expiry keeps counting).
    Pause(sandboxes::IdsArgs),
    /// Resume paused sandboxes.
    Resume(sandboxes::IdsArgs),
    /// Run an execution job (a command, code or a handler) in a sandbox, or in one made from a
    /// template or taken from a pool; waits and prints its result, exit code propagated.
    Run(run::RunArgs),
    /// Templates: apply YAML files, list, show, versions, rollback, export, delete.
    #[command(visible_alias = "templates")]
    Template(templates::TemplateArgs),
    /// Warm pools: list, create, show, delete; acquire and release sandboxes.
    #[command(visible_alias = "pools")]
    Pool(pools::PoolArgs),
    /// Pull an image onto sandboxd's host ahead of time, with a live progress bar.
    Prepull(prepull::PrepullArgs),
    /// Mint, show and revoke user tokens.
    Token(tokens::TokenArgs),
    /// Print a shell completion script: `sandboxd completion bash > /etc/bash_completion.d/sandboxd`.
    Completion(CompletionArgs),
}

/// `completion SHELL`.
#[derive(Debug, clap::Args)]
pub struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Runs one client subcommand and returns the process's exit code: 0, the remote command's
/// code for `exec`, 1 when something failed (the error printed on stderr), 2 for bad usage.
/// `root` builds the whole command line (for completion scripts).
pub fn run(command: ClientCommand, root: fn() -> clap::Command) -> ExitCode {
    if let ClientCommand::Completion(args) = &command {
        clap_complete::generate(args.shell, &mut root(), "sandboxd", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sandboxd: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(dispatch(command));
    // A terminal's stdin reader may still sit in a blocking read: do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("sandboxd: {}", e.report());
            ExitCode::from(e.exit_code())
        }
    }
}

/// The subcommand's work; `Ok` carries the exit code.
async fn dispatch(command: ClientCommand) -> Result<u8, CliError> {
    match command {
        ClientCommand::Ls(args) => sandboxes::ls(args).await,
        ClientCommand::Create(args) => sandboxes::create(args).await,
        ClientCommand::Get(args) => sandboxes::get(args).await,
        ClientCommand::Rm(args) => sandboxes::rm(args).await,
        ClientCommand::Logs(args) => sandboxes::diagnostics(args, "logs").await,
        ClientCommand::Events(args) => sandboxes::diagnostics(args, "events").await,
        ClientCommand::Exec(args) => exec::exec(args).await,
        ClientCommand::Cp(args) => copy::cp(args).await,
        ClientCommand::Pause(args) => sandboxes::act(args, "pause").await,
        ClientCommand::Resume(args) => sandboxes::act(args, "resume").await,
        ClientCommand::Run(args) => run::run(args).await,
        ClientCommand::Template(args) => templates::template(args).await,
        ClientCommand::Pool(args) => pools::pool(args).await,
        ClientCommand::Prepull(args) => prepull::prepull(args).await,
        ClientCommand::Token(args) => tokens::token(args).await,
        ClientCommand::Completion(_) => unreachable!("handled before the runtime starts"),
    }
}

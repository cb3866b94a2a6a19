//! PID 1 mode (`execd init -- <entrypoint...>`) and shutdown signals.
//!
//! As init, execd runs the image's entrypoint as its child, forwards SIGTERM, SIGINT and SIGHUP
//! to it, reaps every orphan (the reaper does that for any pid), and exits with the
//! entrypoint's code. The entrypoint is resolved on execd's own PATH without a shell, so an
//! image with no shell works.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

use super::process::{Exit, ExitStatus, Input, Output, SpawnSpec};
use super::Runtime;
use crate::wire::Usage;

/// The running entrypoint.
pub struct Entrypoint {
    pid: i32,
    exit: tokio::sync::oneshot::Receiver<Exit>,
}

/// Starts the entrypoint with execd's environment (minus secrets) and inherited stdio.
pub fn start_entrypoint(runtime: &Runtime, argv: &[String]) -> anyhow::Result<Entrypoint> {
    let env = runtime.child_env(&Default::default());
    let first = argv.first().context("init needs an entrypoint")?;
    let program = super::env::resolve_program(first, env.get("PATH").map(String::as_str), &runtime.cwd)
        .or_else(|| Some(PathBuf::from(first)).filter(|p| p.is_absolute() && Path::exists(p)))
        .with_context(|| format!("entrypoint {first:?} not found"))?;
    let child = runtime
        .reaper
        .spawn(SpawnSpec {
            env: env.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            stdout: Output::Inherit,
            stderr: Some(Output::Inherit),
            stdin: Input::Inherit,
            ..SpawnSpec::new(program, argv.iter().map(OsString::from).collect())
        })
        .context("cannot start entrypoint")?;
    tracing::info!(pid = child.pid, entrypoint = ?argv, "entrypoint started");
    Ok(Entrypoint {
        pid: child.pid,
        exit: child.exit,
    })
}

/// Forwards termination signals to the entrypoint until it exits; returns the code execd
/// should exit with (its code, or 128 + signal).
pub async fn supervise(mut child: Entrypoint) -> i32 {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; signals will not be forwarded");
        return exit_code((&mut child.exit).await.ok());
    };
    loop {
        let sig = tokio::select! {
            exit = &mut child.exit => return exit_code(exit.ok()),
            _ = term.recv() => Signal::SIGTERM,
            _ = int.recv() => Signal::SIGINT,
            _ = hup.recv() => Signal::SIGHUP,
        };
        tracing::info!(signal = %sig, pid = child.pid, "forwarding signal to entrypoint");
        let _ = kill(Pid::from_raw(child.pid), sig);
    }
}

fn exit_code(exit: Option<Exit>) -> i32 {
    let exit = exit.unwrap_or(Exit {
        status: ExitStatus::Signal(libc::SIGKILL),
        usage: Usage::default(),
    });
    tracing::info!(status = ?exit.status, "entrypoint exited");
    exit.status.shell_code()
}

/// Resolves on SIGTERM or SIGINT (execd not running as init).
pub async fn shutdown_signal() {
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("shutting down");
}

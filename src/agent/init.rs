//! PID 1 mode (`execd init -- <entrypoint...>`) and shutdown signals.
//!
//! As init, execd runs the sandbox's pre-start hook (`OPENSANDBOX_LIFECYCLE`'s `preStart`), if
//! any, to completion, then the image's entrypoint as its child; it forwards SIGTERM, SIGINT
//! and SIGHUP to whichever runs, reaps every orphan (the reaper does that for any pid), and
//! exits with the entrypoint's code. Programs are resolved on execd's own PATH without a
//! shell, so an image with no shell works.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};

use super::env::EnvMap;
use super::process::{Exit, ExitStatus, Input, Output, SpawnError, SpawnSpec};
use super::Runtime;
use crate::wire::lifecycle::{PreStartHook, LIFECYCLE_ENV};
use crate::wire::Usage;

/// How much of the pre-start hook's last output a failure report carries.
const PRE_START_TAIL: usize = 4096;
/// How long to wait, once the hook has exited, for the rest of its output (a process it left
/// behind may hold its pipes open for ever).
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// The running entrypoint.
pub struct Entrypoint {
    pid: i32,
    exit: tokio::sync::oneshot::Receiver<Exit>,
}

/// The termination signals init forwards. Listened for from the start, so that none is lost
/// between the pre-start hook and the entrypoint (a PID 1 without a handler ignores them).
pub struct Signals(
    Option<(
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
        tokio::signal::unix::Signal,
    )>,
);

impl Signals {
    /// Installs the handlers; without them (which should not happen) signals are not
    /// forwarded, and that is logged.
    pub fn install() -> Self {
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(term), Ok(int), Ok(hup)) => Self(Some((term, int, hup))),
            _ => {
                tracing::error!("cannot install signal handlers; signals will not be forwarded");
                Self(None)
            }
        }
    }

    /// The next signal to forward; never resolves without handlers.
    async fn next(&mut self) -> Signal {
        let Some((term, int, hup)) = &mut self.0 else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => Signal::SIGTERM,
            _ = int.recv() => Signal::SIGINT,
            _ = hup.recv() => Signal::SIGHUP,
        }
    }
}

/// The pre-start hook of an `OPENSANDBOX_LIFECYCLE` value ([`Lifecycle`]'s JSON; empty:
/// none). Read through a `serde_json::Value`, whose parser the agent links already: a
/// derived deserializer would cost the binary more than these lines.
pub fn pre_start_hook(lifecycle: &str) -> anyhow::Result<Option<PreStartHook>> {
    use serde_json::Value;
    if lifecycle.trim().is_empty() {
        return Ok(None);
    }
    let invalid = |what: &str| anyhow::anyhow!("{LIFECYCLE_ENV} is not a lifecycle object: {what}");
    let value: Value = serde_json::from_slice(lifecycle.as_bytes()).map_err(|e| invalid(&e.to_string()))?;
    if !value.is_object() {
        return Err(invalid("not an object"));
    }
    let Some(hook) = value.get("preStart").filter(|h| !h.is_null()) else {
        return Ok(None);
    };
    let command = hook
        .get("command")
        .and_then(Value::as_array)
        .and_then(|argv| argv.iter().map(|a| a.as_str().map(str::to_owned)).collect())
        .ok_or_else(|| invalid("preStart.command is not an array of strings"))?;
    let timeout_seconds = match hook.get("timeoutSeconds").filter(|t| !t.is_null()) {
        Some(t) => Some(
            t.as_u64()
                .ok_or_else(|| invalid("preStart.timeoutSeconds is not a whole number"))?,
        ),
        None => None,
    };
    Ok(Some(PreStartHook {
        command,
        timeout_seconds,
    }))
}

/// `argv[0]` resolved on the child's PATH, or as an existing absolute path.
fn resolve(runtime: &Runtime, env: &EnvMap, argv: &[String]) -> Option<PathBuf> {
    let first = argv.first()?;
    super::env::resolve_program(first, env.get("PATH").map(String::as_str), &runtime.cwd)
        .or_else(|| Some(PathBuf::from(first)).filter(|p| p.is_absolute() && Path::exists(p)))
}

fn spawn_spec(program: PathBuf, argv: &[String], env: EnvMap) -> SpawnSpec {
    SpawnSpec {
        env: env.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        ..SpawnSpec::new(program, argv.iter().map(OsString::from).collect())
    }
}

/// Starts the entrypoint with execd's environment (minus secrets) and inherited stdio.
pub fn start_entrypoint(runtime: &Runtime, argv: &[String]) -> anyhow::Result<Entrypoint> {
    let env = runtime.child_env(&Default::default());
    let first = argv.first().context("init needs an entrypoint")?;
    let program = resolve(runtime, &env, argv).with_context(|| format!("entrypoint {first:?} not found"))?;
    let child = runtime
        .reaper
        .spawn(SpawnSpec {
            stdout: Output::Inherit,
            stderr: Some(Output::Inherit),
            stdin: Input::Inherit,
            ..spawn_spec(program, argv, env)
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
pub async fn supervise(mut child: Entrypoint, signals: &mut Signals) -> i32 {
    loop {
        let sig = tokio::select! {
            exit = &mut child.exit => return exit_code(exit.ok()),
            sig = signals.next() => sig,
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

/// Why the pre-start hook failed. Displayed, it is the line execd leaves in the container's
/// log before it exits, which the orchestrator shows as the sandbox's status message.
#[derive(Debug, thiserror::Error)]
pub enum PreStartError {
    /// The hook names no program.
    #[error("preStart failed: the command is empty")]
    Empty,
    /// Its program is not on PATH.
    #[error("preStart failed: {0:?} not found")]
    NotFound(String),
    /// fork/exec failed.
    #[error("preStart failed: {0}")]
    Spawn(#[source] SpawnError),
    /// It exited non-zero or was killed by a signal.
    #[error("preStart failed ({}): {tail}", describe(*status))]
    Failed {
        /// How it ended.
        status: ExitStatus,
        /// Its last output.
        tail: String,
    },
    /// It ran out of time, and its process group was killed.
    #[error("preStart timed out after {secs} s and was killed: {tail}")]
    TimedOut {
        /// The limit.
        secs: u64,
        /// Its last output.
        tail: String,
    },
}

impl PreStartError {
    /// The code execd exits with: the hook's own (or 128 + signal), 124 for a timeout as
    /// `timeout(1)` does, 127 and 126 as a shell does for a missing or unstartable program.
    pub fn exit_code(&self) -> i32 {
        match self {
            PreStartError::Empty | PreStartError::NotFound(_) => 127,
            PreStartError::Spawn(_) => 126,
            PreStartError::Failed { status, .. } => status.shell_code(),
            PreStartError::TimedOut { .. } => 124,
        }
    }
}

fn describe(status: ExitStatus) -> String {
    match status {
        ExitStatus::Code(c) => format!("exit {c}"),
        ExitStatus::Signal(s) => format!("signal {s}"),
    }
}

/// Runs the pre-start hook to completion: its output goes to execd's own stdout and stderr
/// (the container's log) and its last 4 KiB are kept for the failure report; termination
/// signals go to its process group; when it outlives its timeout, the group is killed.
pub async fn run_pre_start(
    runtime: &Runtime,
    hook: &PreStartHook,
    signals: &mut Signals,
) -> Result<(), PreStartError> {
    let env = runtime.child_env(&Default::default());
    let first = hook.command.first().ok_or(PreStartError::Empty)?;
    let program =
        resolve(runtime, &env, &hook.command).ok_or_else(|| PreStartError::NotFound(first.clone()))?;
    let child = runtime
        .reaper
        .spawn(SpawnSpec {
            stdout: Output::Pipe,
            stderr: Some(Output::Pipe),
            ..spawn_spec(program, &hook.command, env)
        })
        .map_err(PreStartError::Spawn)?;
    let pid = child.pid;
    tracing::info!(pid, command = ?hook.command, "preStart started");
    let tail = Arc::new(Mutex::new(Vec::with_capacity(2 * PRE_START_TAIL)));
    let drained = [
        tee(child.stdout, to_stdout, &tail),
        tee(child.stderr, to_stderr, &tail),
    ];
    let secs = hook
        .timeout_seconds
        .unwrap_or(PreStartHook::DEFAULT_TIMEOUT_SECONDS);
    let deadline = tokio::time::sleep(Duration::from_secs(secs));
    tokio::pin!(deadline);
    let mut exit = child.exit;
    let status = loop {
        tokio::select! {
            e = &mut exit => break e.ok().map(|e| e.status),
            () = &mut deadline => break None,
            sig = signals.next() => super::process::signal_group(pid, sig),
        }
    };
    if status.is_none() {
        super::process::signal_group(pid, Signal::SIGKILL);
    }
    for done in drained {
        let _ = tokio::time::timeout(OUTPUT_GRACE, done).await;
    }
    let tail = {
        let bytes = tail.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&bytes).trim_end().to_owned()
    };
    match status {
        Some(ExitStatus::Code(0)) => Ok(()),
        Some(status) => Err(PreStartError::Failed { status, tail }),
        None => Err(PreStartError::TimedOut { secs, tail }),
    }
}

fn to_stdout(bytes: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(bytes).and_then(|()| out.flush());
}

fn to_stderr(bytes: &[u8]) {
    let _ = std::io::stderr().lock().write_all(bytes);
}

/// Copies a pipe through `out` on its own thread, keeping the last [`PRE_START_TAIL`] bytes
/// in `tail`. The receiver resolves when the pipe is at its end.
fn tee(
    pipe: Option<OwnedFd>,
    out: fn(&[u8]),
    tail: &Arc<Mutex<Vec<u8>>>,
) -> tokio::sync::oneshot::Receiver<()> {
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    let Some(pipe) = pipe else {
        return finished;
    };
    let tail = Arc::clone(tail);
    let copy = move || {
        let _done = done;
        let mut pipe = std::fs::File::from(pipe);
        let mut buf = [0u8; 8192];
        loop {
            let n = match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            out(&buf[..n]);
            let mut kept = tail.lock().unwrap_or_else(|e| e.into_inner());
            kept.extend_from_slice(&buf[..n]);
            let excess = kept.len().saturating_sub(PRE_START_TAIL);
            kept.drain(..excess);
        }
    };
    // Without a thread (out of resources) the pipe closes, and the hook may die of SIGPIPE.
    let _ = std::thread::Builder::new()
        .name("prestart-output".into())
        .spawn(copy);
    finished
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pre_start_hook_is_read_and_other_hooks_ignored() {
        let hook = pre_start_hook(
            r#"{"preStart":{"command":["sh","-c","true"],"timeoutSeconds":5},"periodic":[{"name":"n"}]}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(hook.command, ["sh", "-c", "true"]);
        assert_eq!(hook.timeout_seconds, Some(5));
        assert_eq!(pre_start_hook(" ").unwrap(), None);
        assert_eq!(pre_start_hook(r#"{"periodic":[]}"#).unwrap(), None);
        let e = pre_start_hook(r#"{"preStart": 1}"#).unwrap_err();
        assert!(
            e.to_string()
                .contains("OPENSANDBOX_LIFECYCLE is not a lifecycle object"),
            "{e}"
        );
        for bad in [
            "[]",
            "{",
            r#"{"preStart":{"command":"true"}}"#,
            r#"{"preStart":{"command":["true"],"timeoutSeconds":-1}}"#,
        ] {
            assert!(pre_start_hook(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn failures_exit_as_a_shell_would_and_say_what_happened() {
        let failed = PreStartError::Failed {
            status: ExitStatus::Code(3),
            tail: "boom".into(),
        };
        assert_eq!(
            (failed.exit_code(), failed.to_string().as_str()),
            (3, "preStart failed (exit 3): boom")
        );
        let killed = PreStartError::Failed {
            status: ExitStatus::Signal(9),
            tail: String::new(),
        };
        assert_eq!(killed.exit_code(), 137);
        let timed_out = PreStartError::TimedOut {
            secs: 5,
            tail: "waiting".into(),
        };
        assert_eq!(timed_out.exit_code(), 124);
        assert_eq!(PreStartError::NotFound("x".into()).exit_code(), 127);
    }
}

//! Bash sessions: one persistent shell per session, so variables (exported or not), the
//! working directory, functions, aliases, options and background jobs carry over between runs.
//!
//! Each run writes the command to a file and tells the shell, on its stdin, to `source` it
//! with stdin from `/dev/null` and then report `$?` on a private control pipe (fd 3, closed
//! for the user's code). `exit` is aliased to `return`, so `exit 7` ends the run with code 7
//! and leaves the shell alive. stderr is merged into stdout, as upstream does. A pump thread
//! per session routes output into the journal of the current run. If the shell dies (a
//! timeout kills it, or the user's code ends it another way) the run reports it and the next
//! run starts a fresh shell.
//!
//! At most [`Limits::max`] sessions exist at once, and a session idle for [`Limits::idle`]
//! (no run in progress or queued, none started or ended for that long) is deleted by a
//! background task, so that sessions clients forget cannot pile up.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tokio::sync::mpsc;

use super::output::{controlled_pump, Control, CurrentJournal, Framing, Source};
use super::process::{self, Input, Output, SpawnSpec};
use super::stream::{Journal, OutputKind};
use super::{now_ms, CwdError, Runtime};
use crate::wire::{CreateSessionRequest, RunInSessionRequest, StreamEvent};

/// Set up once per shell: aliases must expand in a non-interactive bash for `exit` to become
/// `return` inside sourced runs (and for the user's own aliases to work across runs).
const SHELL_PRELUDE: &str = "shopt -s expand_aliases 2>/dev/null; alias exit=return; unset PROMPT_COMMAND\n";

/// Why a session request was refused.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No session with that id.
    #[error("session {0} not found")]
    NotFound(String),
    /// The cwd could not be expanded or is not a directory.
    #[error(transparent)]
    Cwd(#[from] CwdError),
    /// Negative timeout.
    #[error("timeout must not be negative")]
    Timeout,
    /// The command is empty.
    #[error("command must not be empty")]
    EmptyCommand,
    /// As many sessions as allowed exist.
    #[error("too many bash sessions (at most {0}); delete some or let idle ones expire")]
    Full(usize),
}

/// How many sessions may exist, and how long an unused one lives.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Sessions at once (those behind bash code contexts count as contexts instead).
    pub max: usize,
    /// How long a session without runs lives; `None`: for ever.
    pub idle: Option<Duration>,
}

/// All sessions of this execd.
pub struct Sessions {
    runtime: Arc<Runtime>,
    limits: Limits,
    /// Sessions by id; lookups and inserts only.
    map: Mutex<HashMap<String, Arc<Session>>>,
}

/// One session.
pub struct Session {
    id: String,
    cwd: Option<PathBuf>,
    dir: PathBuf,
    /// The live shell, or `None` before the first run and after it died. Held for the whole
    /// run, which serializes runs of one session in arrival order.
    shell: tokio::sync::Mutex<Option<Shell>>,
    /// Process group of the live shell (0 if none), readable without the async lock.
    pgid: Mutex<i32>,
    /// Runs started and not yet ended (in progress or queued behind one).
    runs: AtomicUsize,
    /// When the session was created or a run last started or ended.
    last_used: Mutex<Instant>,
    /// Who deletes the session: the client (and the idle reaper), or its code context.
    owner: Owner,
}

/// Who a session belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// A client of `/session`: counted against [`Limits::max`], reaped when idle.
    Client,
    /// A bash code context, which counts and reaps it as a context.
    Context,
}

impl Session {
    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Whether the session has had no run for `idle` at `now`.
    fn idle_since(&self, now: Instant, idle: Duration) -> bool {
        let last = *self.last_used.lock().unwrap_or_else(|e| e.into_inner());
        self.runs.load(Ordering::SeqCst) == 0 && now.saturating_duration_since(last) >= idle
    }
}

/// Counts a run from its start to its end, and marks the session used at both.
struct RunGuard(Arc<Session>);

impl RunGuard {
    fn new(session: Arc<Session>) -> Self {
        session.runs.fetch_add(1, Ordering::SeqCst);
        session.touch();
        Self(session)
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        self.0.touch();
        self.0.runs.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Shell {
    pid: i32,
    stdin: std::fs::File,
    events: mpsc::UnboundedReceiver<ShellEvent>,
    /// The journal the pump writes to; swapped per run.
    current: Arc<CurrentJournal>,
}

enum ShellEvent {
    Done(i32),
    Died,
}

impl Sessions {
    /// An empty registry, with its idle reaper (a task that ends with the registry).
    pub fn new(runtime: Arc<Runtime>, limits: Limits) -> Arc<Self> {
        let sessions = Arc::new(Self {
            runtime,
            limits,
            map: Mutex::new(HashMap::new()),
        });
        if let Some(idle) = limits.idle {
            spawn_reaper(Arc::downgrade(&sessions), idle, |s| {
                s.reap_idle(Instant::now());
                std::future::ready(())
            });
        }
        sessions
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a session; its shell starts with the first run.
    pub fn create(&self, req: CreateSessionRequest) -> Result<String, SessionError> {
        self.create_for(req, Owner::Client)
    }

    /// Creates the session behind a bash code context: the context counts it against its own
    /// cap and deletes it when the context goes.
    pub fn create_for_context(&self, req: CreateSessionRequest) -> Result<String, SessionError> {
        self.create_for(req, Owner::Context)
    }

    fn create_for(&self, req: CreateSessionRequest, owner: Owner) -> Result<String, SessionError> {
        let cwd = self.cwd(req.cwd.as_deref())?;
        let id = uuid::Uuid::new_v4().to_string();
        let session = Arc::new(Session {
            dir: self.runtime.state_dir.join("sessions").join(&id),
            id: id.clone(),
            cwd,
            shell: tokio::sync::Mutex::new(None),
            pgid: Mutex::new(0),
            runs: AtomicUsize::new(0),
            last_used: Mutex::new(Instant::now()),
            owner,
        });
        let mut map = self.map();
        if owner == Owner::Client
            && map.values().filter(|s| s.owner == Owner::Client).count() >= self.limits.max
        {
            return Err(SessionError::Full(self.limits.max));
        }
        map.insert(id.clone(), session);
        Ok(id)
    }

    /// Deletes the client sessions idle at `now`; returns how many.
    fn reap_idle(&self, now: Instant) -> usize {
        let Some(idle) = self.limits.idle else { return 0 };
        let ids: Vec<String> = self
            .map()
            .values()
            .filter(|s| s.owner == Owner::Client && s.idle_since(now, idle))
            .map(|s| s.id.clone())
            .collect();
        for id in &ids {
            tracing::info!(session = %id, idle_ms = idle.as_millis() as u64, "deleting idle bash session");
            self.delete(id);
        }
        ids.len()
    }

    /// Whether session `id` has had no run for `idle` at `now` (a bash context's idleness).
    pub(crate) fn is_idle(&self, id: &str, now: Instant, idle: Duration) -> bool {
        self.map().get(id).is_none_or(|s| s.idle_since(now, idle))
    }

    /// The directory a request's `cwd` names, expanded against the environment a session
    /// shell gets. Blocking (reads `EXECD_ENVS`, stat).
    fn cwd(&self, raw: Option<&str>) -> Result<Option<PathBuf>, CwdError> {
        raw.map(|raw| {
            let env = self.runtime.child_env(&Default::default());
            self.runtime.resolve_cwd(raw, &env)
        })
        .transpose()
    }

    /// Whether a session exists.
    pub fn contains(&self, id: &str) -> bool {
        self.map().contains_key(id)
    }

    /// Deletes a session and kills everything it started. Returns false for an unknown id.
    pub fn delete(&self, id: &str) -> bool {
        let Some(session) = self.map().remove(id) else {
            return false;
        };
        session.kill();
        let _ = std::fs::remove_dir_all(&session.dir);
        true
    }

    /// Sends SIGINT to a session's shell and everything it runs. A non-interactive bash
    /// usually exits on it, so the interrupted run reports that the shell ended and the next
    /// run starts a fresh one. Returns false for an unknown id.
    pub fn interrupt(&self, id: &str) -> bool {
        let Some(session) = self.map().get(id).cloned() else {
            return false;
        };
        let pgid = *session.pgid.lock().unwrap_or_else(|e| e.into_inner());
        process::signal_group(pgid, Signal::SIGINT);
        true
    }

    /// Kills every session's shell (shutdown).
    pub fn kill_all(&self) {
        for session in self.map().values() {
            session.kill();
        }
    }

    /// Starts a run. The returned journal already holds `init`; the run proceeds in a task
    /// (after any run already in progress in this session).
    pub fn run(&self, id: &str, req: RunInSessionRequest) -> Result<Arc<Journal>, SessionError> {
        let session = self
            .map()
            .get(id)
            .cloned()
            .ok_or_else(|| SessionError::NotFound(id.to_owned()))?;
        if req.command.trim().is_empty() {
            return Err(SessionError::EmptyCommand);
        }
        let timeout = match req.timeout {
            None | Some(0) => None,
            Some(ms) if ms < 0 => return Err(SessionError::Timeout),
            Some(ms) => Some(Duration::from_millis(ms as u64)),
        };
        let cwd = self.cwd(req.cwd.as_deref())?;
        let run_id = uuid::Uuid::new_v4().simple().to_string();
        let journal = Journal::new(self.runtime.journal_path(&run_id));
        journal.push(&StreamEvent::init(&session.id, now_ms()));
        let runtime = Arc::clone(&self.runtime);
        let j = Arc::clone(&journal);
        let run = RunGuard::new(session);
        tokio::spawn(async move {
            let session = &run.0;
            let started = Instant::now();
            let terminal = session.execute(&runtime, &j, &req.command, cwd, timeout).await;
            let terminal = match terminal {
                Ok(0) => StreamEvent::complete(started.elapsed().as_millis() as u64, now_ms()),
                Ok(code) => StreamEvent::error(
                    "CommandExecError",
                    code.to_string(),
                    vec![format!("command exited with code {code}")],
                    now_ms(),
                ),
                Err(reason) => StreamEvent::error("CommandExecError", "-1".into(), vec![reason], now_ms()),
            };
            j.finish(&terminal);
        });
        Ok(journal)
    }
}

impl Session {
    fn kill(&self) {
        let pgid = *self.pgid.lock().unwrap_or_else(|e| e.into_inner());
        process::signal_group(pgid, Signal::SIGKILL);
    }

    /// Runs `command` in the shell (starting one if needed); returns its exit code, or why the
    /// run ended without one.
    async fn execute(
        &self,
        runtime: &Runtime,
        journal: &Arc<Journal>,
        command: &str,
        cwd: Option<PathBuf>,
        timeout: Option<Duration>,
    ) -> Result<i32, String> {
        let mut guard = self.shell.lock().await;
        if guard.is_none() {
            *guard = Some(
                self.start_shell(runtime)
                    .map_err(|e| format!("cannot start session shell: {e}"))?,
            );
        }
        let shell = guard.as_mut().expect("set above");
        *shell.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(journal));
        while shell.events.try_recv().is_ok() {} // stale reports from a previous run

        let script = self.dir.join("run.sh");
        let mut line = String::new();
        if let Some(dir) = &cwd {
            line.push_str(&format!("cd -- {} && ", shell_quote(&dir.to_string_lossy())));
        }
        line.push_str(&format!(
            "source {} 3>&- </dev/null; printf '%s\\n' \"$?\" >&3\n",
            shell_quote(&script.to_string_lossy())
        ));
        let sent = std::fs::write(&script, command).and_then(|()| shell.stdin.write_all(line.as_bytes()));
        let outcome = match sent {
            Err(e) => Err(format!("cannot hand the command to the session shell: {e}")),
            Ok(()) => {
                let wait = shell.events.recv();
                let event = match timeout {
                    Some(limit) => tokio::time::timeout(limit, wait).await.map_err(|_| limit),
                    None => Ok(wait.await),
                };
                match event {
                    Ok(Some(ShellEvent::Done(code))) => Ok(code),
                    Ok(Some(ShellEvent::Died) | None) => Err("session shell exited; the next run starts a fresh shell".into()),
                    Err(limit) => Err(format!(
                        "timed out after {} ms; the session shell was killed and the next run starts a fresh shell",
                        limit.as_millis()
                    )),
                }
            }
        };
        *shell.current.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if outcome.is_err() {
            process::signal_group(shell.pid, Signal::SIGKILL);
            *guard = None;
            *self.pgid.lock().unwrap_or_else(|e| e.into_inner()) = 0;
        }
        outcome
    }

    fn start_shell(&self, runtime: &Runtime) -> std::io::Result<Shell> {
        std::fs::create_dir_all(&self.dir)?;
        let env = runtime.child_env(&Default::default());
        let (program, name) = runtime.shell(&env);
        let mut args = vec![name.into()];
        if name == "bash" {
            args.extend(["--noprofile".into(), "--norc".into()]);
        }
        let (ctrl_r, ctrl_w) = std::io::pipe()?;
        let child = runtime
            .reaper
            .spawn(SpawnSpec {
                env: env.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
                cwd: self.cwd.clone(),
                stdin: Input::Pipe,
                stdout: Output::Pipe,
                stderr: None,
                fd3: Some(ctrl_w.into()),
                ..SpawnSpec::new(program, args)
            })
            .map_err(std::io::Error::other)?;
        let mut stdin = std::fs::File::from(
            child
                .stdin
                .ok_or_else(|| std::io::Error::other("no stdin pipe"))?,
        );
        stdin.write_all(SHELL_PRELUDE.as_bytes())?;
        let output = child
            .stdout
            .ok_or_else(|| std::io::Error::other("no output pipe"))?;
        let current: Arc<CurrentJournal> = Arc::default();
        let (tx, rx) = mpsc::unbounded_channel();
        let pump_current = Arc::clone(&current);
        let sources = vec![Source {
            fd: output,
            kind: OutputKind::Stdout,
        }];
        std::thread::Builder::new()
            .name(format!("session-{}", &self.id[..8]))
            .spawn(move || {
                controlled_pump(
                    sources,
                    ctrl_r.into(),
                    Framing::Lines,
                    &pump_current,
                    |control, _| {
                        let event = match control {
                            Control::Line(text) => {
                                let code = std::str::from_utf8(text).ok().and_then(|s| s.trim().parse().ok());
                                ShellEvent::Done(code.unwrap_or(-1))
                            }
                            Control::Closed => ShellEvent::Died,
                        };
                        let _ = tx.send(event);
                    },
                )
            })?;
        // The reaper must still collect the shell; nobody needs its status beyond the pipes.
        drop(child.exit);
        *self.pgid.lock().unwrap_or_else(|e| e.into_inner()) = child.pid;
        Ok(Shell {
            pid: child.pid,
            stdin,
            events: rx,
            current,
        })
    }
}

/// Spawns the task that calls `reap` on the registry behind `weak` a few times per `idle`
/// (at most once a minute apart), until the registry is dropped.
pub(crate) fn spawn_reaper<T, F>(weak: Weak<T>, idle: Duration, reap: impl Fn(Arc<T>) -> F + Send + 'static)
where
    T: Send + Sync + 'static,
    F: std::future::Future<Output = ()> + Send,
{
    let period = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(60));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match weak.upgrade() {
                Some(registry) => reap(registry).await,
                None => return,
            }
        }
    });
}

/// Single-quotes `s` for the shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

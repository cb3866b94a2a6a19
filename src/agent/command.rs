//! Commands: `POST /command` executions, their registry, status, logs, stdin and interrupts.
//!
//! A foreground command streams its output line by line into its journal through a pump
//! thread; a background command writes stdout and stderr straight into a log file and its
//! journal holds only `init` and `execution_complete`. Either way a supervisor task owns the
//! process until it is reaped, enforces the timeout, and closes the journal with the terminal
//! event. Nothing here depends on the HTTP request: a client that disconnects changes nothing.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use super::output::{exit_event, PumpThread, Source};
use super::process::{self, Exit, ExitStatus, Identity, Input, Output, SpawnError, SpawnSpec};
use super::stream::{Journal, OutputKind};
use super::{now_ms, rfc3339, CwdError, Runtime};
use crate::wire::{CommandStatusResponse, RunCommandRequest, StreamEvent, Usage};

/// How long a finished command's record, journal and log are kept.
const RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Grace between SIGTERM and SIGKILL on interrupt.
pub const INTERRUPT_GRACE: Duration = Duration::from_secs(3);

/// A command id: 32 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CommandId(String);

impl CommandId {
    fn new() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    /// The id as sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why a command could not be started; all are the caller's fault (400).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Neither or both of `command` and `argv`.
    #[error("exactly one of command and argv is required")]
    CommandOrArgv,
    /// `argv` empty, `argv[0]` empty, or a NUL byte anywhere.
    #[error("invalid argv: {0}")]
    Argv(&'static str),
    /// `gid` without `uid`.
    #[error("gid requires uid")]
    GidWithoutUid,
    /// Negative timeout.
    #[error("timeout must be a positive number of milliseconds")]
    Timeout,
    /// The cwd could not be expanded or is not a directory.
    #[error(transparent)]
    Cwd(#[from] CwdError),
    /// An environment variable name or value is invalid.
    #[error("invalid envs: {0}")]
    Envs(String),
}

/// Lifecycle of a command.
enum CommandState {
    Running,
    Finished {
        status: ExitStatus,
        usage: Option<Usage>,
        /// Set when the process never started.
        start_error: Option<String>,
        at: SystemTime,
    },
}

/// One command and everything needed to answer questions about it.
pub struct CommandRecord {
    /// Its id.
    pub id: CommandId,
    /// The command text, or argv joined by spaces.
    pub content: String,
    /// Started with `background: true`.
    pub background: bool,
    /// Its event journal.
    pub journal: Arc<Journal>,
    /// Process group id (0 if it never started).
    pgid: i32,
    started_at: SystemTime,
    state: Mutex<CommandState>,
    /// The stdin pipe when the command asked for one; async because writes may block.
    stdin: tokio::sync::Mutex<Option<pipe::Sender>>,
    log_path: Option<PathBuf>,
}

impl CommandRecord {
    fn state(&self) -> MutexGuard<'_, CommandState> {
        // Plain assignments only; a poisoned lock still holds a valid state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the process is still running.
    pub fn running(&self) -> bool {
        matches!(*self.state(), CommandState::Running)
    }

    /// The contract's status document.
    pub fn status(&self) -> CommandStatusResponse {
        let mut resp = CommandStatusResponse {
            id: self.id.0.clone(),
            content: self.content.clone(),
            running: true,
            exit_code: None,
            error: None,
            started_at: rfc3339(self.started_at),
            finished_at: None,
            usage: None,
        };
        if let CommandState::Finished {
            status,
            usage,
            start_error,
            at,
        } = &*self.state()
        {
            resp.running = false;
            resp.exit_code = Some(status.code());
            resp.error = start_error
                .clone()
                .or_else(|| (!status.success()).then(|| status.describe()));
            resp.finished_at = Some(rfc3339(*at));
            resp.usage = *usage;
        }
        resp
    }

    /// Path of the background log, if this is a background command.
    pub fn log_path(&self) -> Option<&PathBuf> {
        self.log_path.as_ref()
    }

    fn finished_before(&self, cutoff: SystemTime) -> bool {
        matches!(*self.state(), CommandState::Finished { at, .. } if at < cutoff)
    }
}

/// Outcome of writing to a command's stdin.
#[derive(Debug, thiserror::Error)]
pub enum StdinError {
    /// The command was not started with `stdin: true`, or stdin was already closed.
    #[error("stdin of this command is not open")]
    NotOpen,
    /// The process closed its end.
    #[error("writing stdin failed: {0}")]
    Write(#[source] std::io::Error),
}

/// All commands of this execd.
pub struct Commands {
    runtime: Arc<Runtime>,
    /// Records by id; lookups and inserts only, never held across `.await`.
    map: Mutex<HashMap<String, Arc<CommandRecord>>>,
}

/// A validated request, ready to spawn.
struct Plan {
    program: PathBuf,
    args: Vec<OsString>,
    content: String,
    env: Vec<(OsString, OsString)>,
    cwd: Option<PathBuf>,
    identity: Option<Identity>,
    timeout: Option<Duration>,
    background: bool,
    stdin: bool,
}

impl Commands {
    /// An empty registry; also starts the hourly cleanup of old records.
    pub fn new(runtime: Arc<Runtime>) -> Arc<Self> {
        let commands = Arc::new(Self {
            runtime,
            map: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&commands);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(c) => c.remove_finished_before(SystemTime::now() - RETENTION),
                    None => return,
                }
            }
        });
        commands
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<CommandRecord>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Looks a command up by id.
    pub fn get(&self, id: &str) -> Option<Arc<CommandRecord>> {
        self.map().get(id).cloned()
    }

    /// Validates and starts a command. Its journal already holds `init` when this returns
    /// (the record is stored first, so status and interrupt work at once).
    pub fn start(&self, req: RunCommandRequest) -> Result<Arc<CommandRecord>, CommandError> {
        let plan = self.plan(req)?;
        let id = CommandId::new();
        let journal = Journal::new(self.runtime.journal_path(id.as_str()));
        let log_path = plan.background.then(|| {
            self.runtime
                .state_dir
                .join("commands")
                .join(format!("{}.log", id.as_str()))
        });
        let started = Instant::now();
        let started_at = SystemTime::now();

        let spawned = self.spawn(&plan, log_path.as_ref());
        let (pgid, state, child) = match spawned {
            Ok(child) => (child.pid, CommandState::Running, Some(child)),
            Err(e) => {
                let state = CommandState::Finished {
                    status: ExitStatus::Code(127),
                    usage: None,
                    start_error: Some(e.to_string()),
                    at: SystemTime::now(),
                };
                (0, state, None)
            }
        };
        let record = Arc::new(CommandRecord {
            id: id.clone(),
            content: plan.content.clone(),
            background: plan.background,
            journal: Arc::clone(&journal),
            pgid,
            started_at,
            state: Mutex::new(state),
            stdin: tokio::sync::Mutex::new(None),
            log_path,
        });
        self.map().insert(id.0.clone(), Arc::clone(&record));
        journal.push(&StreamEvent::init(id.as_str(), now_ms()));

        let Some(mut child) = child else {
            let message = match &*record.state() {
                CommandState::Finished {
                    start_error: Some(m), ..
                } => m.clone(),
                _ => String::new(),
            };
            journal.finish(&StreamEvent::error(
                "CommandExecError",
                "127".into(),
                vec![message],
                now_ms(),
            ));
            return Ok(record);
        };
        if let Some(fd) = child.stdin.take() {
            if let Ok(sender) = pipe::Sender::from_owned_fd(fd) {
                // Fresh mutex, no other holder yet.
                if let Ok(mut slot) = record.stdin.try_lock() {
                    *slot = Some(sender);
                }
            }
        }
        let pump = if plan.background {
            // The stream of a background command ends here; the supervisor's terminal event
            // is then dropped, and the outcome is read through status and logs.
            journal.finish(&StreamEvent::complete(
                started.elapsed().as_millis() as u64,
                now_ms(),
            ));
            None
        } else {
            let sources = [
                (child.stdout.take(), OutputKind::Stdout),
                (child.stderr.take(), OutputKind::Stderr),
            ]
            .into_iter()
            .filter_map(|(fd, kind)| fd.map(|fd| Source { fd, kind }))
            .collect();
            Some(PumpThread::start(
                format!("pump-{}", &record.id.0[..8]),
                sources,
                Arc::clone(&journal),
            ))
        };
        tokio::spawn(supervise(
            Arc::clone(&record),
            child.exit,
            pump,
            plan.timeout,
            started,
        ));
        Ok(record)
    }

    fn plan(&self, req: RunCommandRequest) -> Result<Plan, CommandError> {
        if req.gid.is_some() && req.uid.is_none() {
            return Err(CommandError::GidWithoutUid);
        }
        let timeout = match req.timeout {
            None | Some(0) => None,
            Some(ms) if ms < 0 => return Err(CommandError::Timeout),
            Some(ms) => Some(Duration::from_millis(ms as u64)),
        };
        let request_envs = req.envs.unwrap_or_default();
        for (k, v) in &request_envs {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(CommandError::Envs(format!("bad variable {k:?}")));
            }
        }
        let env = self.runtime.child_env(&request_envs);
        let cwd = req
            .cwd
            .as_deref()
            .map(|raw| self.runtime.resolve_cwd(raw, &env))
            .transpose()?;
        let (program, args, content) = match (req.command, req.argv) {
            (Some(text), None) => {
                let (shell, name) = self.runtime.shell(&env);
                let content = text.clone();
                (shell, vec![name.into(), "-c".into(), text.into()], content)
            }
            (None, Some(argv)) => {
                let first = argv.first().ok_or(CommandError::Argv("argv is empty"))?;
                if first.is_empty() {
                    return Err(CommandError::Argv("argv[0] is empty"));
                }
                if argv.iter().any(|a| a.contains('\0')) {
                    return Err(CommandError::Argv("NUL byte in argument"));
                }
                let base = cwd.clone().unwrap_or_else(|| self.runtime.cwd.clone());
                // An unresolvable program is reported after init, like any start failure.
                let program = super::env::resolve_program(first, env.get("PATH").map(String::as_str), &base)
                    .unwrap_or_else(|| PathBuf::from(first));
                let content = argv.join(" ");
                (program, argv.into_iter().map(OsString::from).collect(), content)
            }
            _ => return Err(CommandError::CommandOrArgv),
        };
        let identity = req.uid.map(|uid| identity_for(uid, req.gid));
        Ok(Plan {
            program,
            args,
            content,
            env: env.into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
            cwd,
            identity,
            timeout,
            background: req.background.unwrap_or(false),
            stdin: req.stdin.unwrap_or(false),
        })
    }

    fn spawn(&self, plan: &Plan, log_path: Option<&PathBuf>) -> Result<process::Child, SpawnError> {
        let stdout = match log_path {
            Some(path) => {
                let file = open_log(path).map_err(|source| SpawnError::Exec {
                    program: path.display().to_string(),
                    source,
                })?;
                Output::File(file)
            }
            None => Output::Pipe,
        };
        let stderr = log_path.is_none().then_some(Output::Pipe);
        self.runtime.reaper.spawn(SpawnSpec {
            env: plan.env.clone(),
            cwd: plan.cwd.clone(),
            stdin: if plan.stdin { Input::Pipe } else { Input::Null },
            stdout,
            stderr,
            identity: plan.identity.clone(),
            ..SpawnSpec::new(plan.program.clone(), plan.args.clone())
        })
    }

    /// Interrupts a running command: SIGTERM to its group, SIGKILL after 3 s. Returns false
    /// for an unknown id; a finished command is left as it is.
    pub fn interrupt(&self, id: &str) -> bool {
        let Some(record) = self.get(id) else {
            return false;
        };
        if record.running() {
            let pgid = record.pgid;
            tokio::spawn(process::terminate_group(pgid, INTERRUPT_GRACE));
        }
        true
    }

    /// Appends `data` to the command's stdin, closing it afterwards when `eof` is set.
    pub async fn write_stdin(
        &self,
        record: &CommandRecord,
        data: &[u8],
        eof: bool,
    ) -> Result<(), StdinError> {
        let mut slot = record.stdin.lock().await;
        let sender = slot.as_mut().ok_or(StdinError::NotOpen)?;
        if !data.is_empty() {
            if let Err(e) = sender.write_all(data).await {
                *slot = None;
                return Err(StdinError::Write(e));
            }
        }
        if eof {
            *slot = None;
        }
        Ok(())
    }

    /// Kills every running command's process group (shutdown).
    pub fn kill_all(&self) {
        for record in self.map().values() {
            if record.running() {
                process::signal_group(record.pgid, Signal::SIGKILL);
            }
        }
    }

    fn remove_finished_before(&self, cutoff: SystemTime) {
        let removed: Vec<Arc<CommandRecord>> = {
            let mut map = self.map();
            let old: Vec<String> = map
                .iter()
                .filter(|(_, r)| r.finished_before(cutoff))
                .map(|(k, _)| k.clone())
                .collect();
            old.iter().filter_map(|k| map.remove(k)).collect()
        };
        for record in removed {
            if let Some(path) = &record.log_path {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

fn open_log(path: &PathBuf) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// The identity for `uid`: its passwd entry's primary group and supplementary groups, unless
/// `gid` overrides the group. An unknown uid runs with gid = `gid` or the uid itself.
fn identity_for(uid: u32, gid: Option<u32>) -> Identity {
    use nix::unistd::{getgrouplist, Gid, Uid, User};
    match User::from_uid(Uid::from_raw(uid)).ok().flatten() {
        Some(user) => {
            let primary = gid.unwrap_or(user.gid.as_raw());
            let name = std::ffi::CString::new(user.name.as_bytes()).unwrap_or_default();
            let mut groups: Vec<u32> = getgrouplist(&name, Gid::from_raw(primary))
                .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
                .unwrap_or_else(|_| vec![primary]);
            if !groups.contains(&primary) {
                groups.push(primary);
            }
            Identity {
                uid,
                gid: primary,
                groups,
            }
        }
        None => {
            let g = gid.unwrap_or(uid);
            Identity {
                uid,
                gid: g,
                groups: vec![g],
            }
        }
    }
}

/// Owns a started command until it is reaped: enforces the timeout, waits for its output to
/// drain, records the exit, and writes the terminal event.
async fn supervise(
    record: Arc<CommandRecord>,
    exit: oneshot::Receiver<Exit>,
    pump: Option<PumpThread>,
    timeout: Option<Duration>,
    started: Instant,
) {
    let pgid = record.pgid;
    let kill = async move { process::signal_group(pgid, Signal::SIGKILL) };
    let (exit, timed_out) = process::wait_exit(exit, timeout, kill).await;
    let exit = exit.unwrap_or(Exit {
        status: ExitStatus::Signal(libc::SIGKILL),
        usage: Usage::default(),
    });
    if timed_out {
        // Anything the group left behind dies with it.
        process::signal_group(record.pgid, Signal::SIGKILL);
    }
    if let Some(pump) = pump {
        pump.drain().await;
    }
    *record.state() = CommandState::Finished {
        status: exit.status,
        usage: Some(exit.usage),
        start_error: None,
        at: SystemTime::now(),
    };
    *record.stdin.lock().await = None;
    let note = timed_out.then(|| format!("timed out after {} ms", timeout.unwrap_or_default().as_millis()));
    let elapsed = started.elapsed().as_millis() as u64;
    record
        .journal
        .finish(&exit_event(exit.status, exit.status.code(), elapsed, note));
}

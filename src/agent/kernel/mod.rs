//! Code contexts: stateful interpreters behind `/code`.
//!
//! A context runs on one of three engines: a Jupyter kernel spoken to over ZeroMQ
//! ([`jupyter`]), the built-in python driver ([`builtin`]), or a bash session (the same
//! mechanism as `/session`). Which engine serves a language is decided from the kernelspecs
//! found at start ([`spec`]) and `EXECD_NO_JUPYTER`. Every run gets its own journal, so code
//! streams behave exactly like command streams. One run at a time per context; a dead
//! interpreter is replaced on the next run (its state is lost, and the run that saw it die
//! says so). A warm pool of python kernels makes context creation instant.
//!
//! Interrupts (`DELETE /code`) are counted per run in [`Interrupts`] from the moment the run
//! is accepted, before `init` reaches the client; the engine applies them once its interpreter
//! can act on them, and a run interrupted before its cell was handed over never starts it.
//!
//! At most [`Limits::max`] contexts exist at once; one without a run for [`Limits::idle`] is
//! deleted (with its interpreter) by a background task.

pub mod builtin;
pub mod jupyter;
pub mod spec;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::{Notify, OwnedMutexGuard};

use self::builtin::BuiltinPython;
use self::jupyter::JupyterKernel;
use self::spec::KernelSpec;
use super::command::Commands;
use super::session::Sessions;
use super::stream::Journal;
use super::{now_ms, Runtime};
use crate::wire::code::{Backend, CodeContext, LanguageInfo};
use crate::wire::{CreateSessionRequest, EventType, RunCommandRequest, RunInSessionRequest, StreamEvent};

/// How one execution ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The interpreter finished the cell; `failed` if it reported an error.
    Finished {
        /// An `error` event was emitted.
        failed: bool,
    },
    /// The interpreter died during the cell.
    Died,
}

/// The interrupt requests of one run.
///
/// Issue 19: `DELETE /code` may come at any moment after `init`, including before the run's
/// task has handed the cell to the interpreter, or before the interpreter has picked it up and
/// can be interrupted at all. A request is therefore recorded here as soon as the run exists,
/// never sent blindly: the engine delivers each request once its interpreter has started the
/// cell (and the run ends without starting the cell if it was interrupted before that).
#[derive(Default)]
pub struct Interrupts {
    /// Requests so far; an engine delivers one interrupt for each it has not delivered yet.
    requested: AtomicU64,
    /// Wakes the engine waiting for a new request.
    notify: Notify,
}

impl Interrupts {
    /// Records one request and wakes the engine.
    pub fn request(&self) {
        self.requested.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// How many requests were made so far.
    pub fn requested(&self) -> u64 {
        self.requested.load(Ordering::SeqCst)
    }

    /// Waits until more than `seen` requests were made; returns how many.
    pub async fn more_than(&self, seen: u64) -> u64 {
        loop {
            // Registered before the check, so a request between the check and the await
            // still wakes us.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = self.requested();
            if now > seen {
                return now;
            }
            notified.await;
        }
    }
}

/// Why a context request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// No engine for the language.
    #[error("unknown language {language:?}; available: {available}")]
    UnknownLanguage {
        /// What was asked for.
        language: String,
        /// What exists, comma-separated.
        available: String,
    },
    /// No context with that id.
    #[error("context not found: {0}")]
    NotFound(String),
    /// The cwd cannot be used.
    #[error("invalid cwd {cwd:?}: {reason}")]
    Cwd {
        /// As given.
        cwd: String,
        /// Why.
        reason: String,
    },
    /// The code is empty.
    #[error("code must not be empty")]
    EmptyCode,
    /// The interpreter could not be started.
    #[error("cannot start the {language} interpreter: {reason}")]
    Start {
        /// Language.
        language: String,
        /// Why.
        reason: String,
    },
    /// A command-language run was refused.
    #[error(transparent)]
    Command(#[from] super::command::CommandError),
    /// A bash run was refused.
    #[error(transparent)]
    Session(#[from] super::session::SessionError),
    /// As many contexts as allowed exist.
    #[error("too many code contexts (at most {0}); delete some or let idle ones expire")]
    Full(usize),
}

/// How many contexts may exist, and how long an unused one lives.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Contexts at once (default contexts included, the warm pool not).
    pub max: usize,
    /// How long a context without runs lives; `None`: for ever.
    pub idle: Option<Duration>,
}

/// Which engine runs a language.
#[derive(Clone)]
enum Engine {
    Jupyter(KernelSpec),
    Python(PathBuf),
    Bash,
}

impl Engine {
    fn backend(&self) -> Backend {
        match self {
            Engine::Jupyter(_) => Backend::Jupyter,
            Engine::Python(_) | Engine::Bash => Backend::Builtin,
        }
    }
}

/// A live interpreter of a context.
enum Interpreter {
    Jupyter(JupyterKernel),
    Python(BuiltinPython),
}

impl Interpreter {
    fn is_alive(&self) -> bool {
        match self {
            Interpreter::Jupyter(k) => k.is_alive(),
            Interpreter::Python(p) => p.is_alive(),
        }
    }

    async fn execute(&self, code: &str, journal: &Arc<Journal>, interrupts: &Interrupts) -> Outcome {
        match self {
            Interpreter::Jupyter(k) => k.execute(code, journal, interrupts).await,
            Interpreter::Python(p) => p.execute(code, journal, interrupts).await,
        }
    }
}

/// The interpreter slot of a context, held by a run for its whole length.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Interpreter>>>>;

/// One context.
pub struct Context {
    id: String,
    language: String,
    cwd: Option<PathBuf>,
    engine: Engine,
    /// The interpreter; `None` until started and after it died. Taken by a run before its
    /// `init` is written and held until its terminal event: a second run that cannot take it
    /// at once is refused as busy.
    interpreter: Slot,
    /// The interrupt requests of the run holding the slot above; set before that run's `init`
    /// is written, so no interrupt sent after `init` can miss it.
    current: Mutex<Option<Arc<Interrupts>>>,
    /// When the context was created or a run last started or ended.
    last_used: Mutex<Instant>,
}

impl Context {
    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Whether the context has had no run for `idle` at `now` (a bash context asks its
    /// session, which sees its runs).
    fn idle_since(&self, sessions: &Sessions, now: Instant, idle: Duration) -> bool {
        if matches!(self.engine, Engine::Bash) {
            return sessions.is_idle(&self.id, now, idle);
        }
        let last = *self.last_used.lock().unwrap_or_else(|e| e.into_inner());
        // A run sets `current` before its `init` and clears it after its last use is recorded.
        let running = self.current.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        !running && now.saturating_duration_since(last) >= idle
    }

    fn wire(&self, with_cwd: bool) -> CodeContext {
        CodeContext {
            id: self.id.clone(),
            language: self.language.clone(),
            cwd: self
                .cwd
                .as_ref()
                .filter(|_| with_cwd)
                .map(|p| p.to_string_lossy().into_owned()),
        }
    }
}

/// All code contexts.
pub struct Contexts {
    runtime: Arc<Runtime>,
    commands: Arc<Commands>,
    sessions: Arc<Sessions>,
    engines: Vec<(String, Engine)>,
    driver: PathBuf,
    /// Contexts by id; lookups and inserts only.
    map: Mutex<HashMap<String, Arc<Context>>>,
    /// Default context id per language.
    defaults: tokio::sync::Mutex<HashMap<String, String>>,
    /// Started python kernels waiting to be handed to new contexts.
    pool: Mutex<Vec<JupyterKernel>>,
    pool_size: usize,
    limits: Limits,
}

impl Contexts {
    /// Discovers engines and starts the warm pool.
    pub fn new(
        runtime: Arc<Runtime>,
        commands: Arc<Commands>,
        sessions: Arc<Sessions>,
        no_jupyter: bool,
        pool_size: usize,
        limits: Limits,
    ) -> Arc<Self> {
        let env = runtime.child_env(&Default::default());
        let specs = if no_jupyter {
            Vec::new()
        } else {
            spec::discover(&env)
        };
        let mut engines: Vec<(String, Engine)> = Vec::new();
        for s in specs {
            if !s.language.is_empty() && !engines.iter().any(|(l, _)| *l == s.language) {
                engines.push((s.language.clone(), Engine::Jupyter(s)));
            }
        }
        let path = env.get("PATH").map(String::as_str);
        if !engines.iter().any(|(l, _)| l == "python") {
            if let Some(python) = super::env::resolve_program("python3", path, &runtime.cwd) {
                engines.push(("python".into(), Engine::Python(python)));
            }
        }
        if !engines.iter().any(|(l, _)| l == "bash") {
            engines.push(("bash".into(), Engine::Bash));
        }
        let driver = runtime.state_dir.join("driver.py");
        if let Err(e) = std::fs::write(&driver, builtin::DRIVER) {
            tracing::warn!(error = %e, "cannot write the python driver");
        }
        tracing::info!(languages = ?engines.iter().map(|(l, e)| (l, e.backend())).collect::<Vec<_>>(), "code engines");
        let contexts = Arc::new(Self {
            runtime,
            commands,
            sessions,
            engines,
            driver,
            map: Mutex::new(HashMap::new()),
            defaults: tokio::sync::Mutex::new(HashMap::new()),
            pool: Mutex::new(Vec::new()),
            pool_size,
            limits,
        });
        contexts.refill_pool();
        if let Some(idle) = limits.idle {
            super::session::spawn_reaper(Arc::downgrade(&contexts), idle, |c| async move {
                c.reap_idle(Instant::now()).await;
            });
        }
        contexts
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Context>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Languages this sandbox can run, and by what.
    pub fn languages(&self) -> Vec<LanguageInfo> {
        let pooled = self.python_spec().map(|s| s.name);
        let warm = self.pool.lock().unwrap_or_else(|e| e.into_inner()).len();
        self.engines
            .iter()
            .map(|(language, engine)| LanguageInfo {
                language: language.clone(),
                backend: engine.backend(),
                kernel: match engine {
                    Engine::Jupyter(s) => Some(s.name.clone()),
                    _ => None,
                },
                display_name: match engine {
                    Engine::Jupyter(s) => Some(s.display_name.clone()),
                    Engine::Python(p) => Some(format!("Python ({})", p.display())),
                    Engine::Bash => Some("Bash".into()),
                },
                warm: match engine {
                    Engine::Jupyter(s) if pooled.as_ref() == Some(&s.name) => Some(warm),
                    _ => None,
                },
            })
            .collect()
    }

    fn engine(&self, language: &str) -> Result<Engine, ContextError> {
        let language = language.to_lowercase();
        self.engines
            .iter()
            .find(|(l, _)| *l == language)
            .map(|(_, e)| e.clone())
            .ok_or_else(|| ContextError::UnknownLanguage {
                language,
                available: self
                    .engines
                    .iter()
                    .map(|(l, _)| l.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    fn python_spec(&self) -> Option<KernelSpec> {
        match self.engine("python") {
            Ok(Engine::Jupyter(s)) => Some(s),
            _ => None,
        }
    }

    /// Keeps `pool_size` python kernels started in the background.
    fn refill_pool(self: &Arc<Self>) {
        let Some(spec) = self.python_spec() else { return };
        let missing = self
            .pool_size
            .saturating_sub(self.pool.lock().unwrap_or_else(|e| e.into_inner()).len());
        for _ in 0..missing {
            let this = Arc::clone(self);
            let spec = spec.clone();
            tokio::spawn(async move {
                let dir = this.kernel_dir();
                match JupyterKernel::start(
                    &spec,
                    &this.runtime.reaper,
                    this.runtime.child_env(&Default::default()),
                    None,
                    dir,
                )
                .await
                {
                    Ok(k) => this.pool.lock().unwrap_or_else(|e| e.into_inner()).push(k),
                    Err(e) => tracing::warn!(error = %e, "warm kernel failed to start"),
                }
            });
        }
    }

    fn kernel_dir(&self) -> PathBuf {
        self.runtime
            .state_dir
            .join("kernels")
            .join(&uuid::Uuid::new_v4().simple().to_string()[..12])
    }

    /// Creates a context (starting its interpreter now, so failures are reported here).
    pub async fn create(
        self: &Arc<Self>,
        language: &str,
        cwd: Option<String>,
    ) -> Result<CodeContext, ContextError> {
        let engine = self.engine(language)?;
        self.check_room()?;
        let cwd = match cwd.filter(|c| !c.is_empty()) {
            None => None,
            Some(raw) => Some(self.prepare_cwd(&raw)?),
        };
        let id = match &engine {
            // A bash context is a session; its id doubles as the context id.
            Engine::Bash => {
                let req = CreateSessionRequest {
                    cwd: cwd.as_ref().map(|p| p.to_string_lossy().into_owned()),
                };
                self.sessions.create_for_context(req)?
            }
            _ => uuid::Uuid::new_v4().to_string(),
        };
        let context = Arc::new(Context {
            id: id.clone(),
            language: language.to_lowercase(),
            cwd,
            engine,
            interpreter: Arc::new(tokio::sync::Mutex::new(None)),
            current: Mutex::new(None),
            last_used: Mutex::new(Instant::now()),
        });
        {
            let mut slot = context.interpreter.lock().await;
            *slot = self.start_interpreter(&context).await?;
        }
        // Checked again: other creates may have filled the room while this one started.
        let mut map = self.map();
        if map.len() >= self.limits.max {
            drop(map);
            if matches!(context.engine, Engine::Bash) {
                self.sessions.delete(&context.id);
            }
            return Err(ContextError::Full(self.limits.max));
        }
        map.insert(id, Arc::clone(&context));
        Ok(context.wire(true))
    }

    /// Refuses a new context when the cap is reached (before an interpreter is started).
    fn check_room(&self) -> Result<(), ContextError> {
        if self.map().len() >= self.limits.max {
            return Err(ContextError::Full(self.limits.max));
        }
        Ok(())
    }

    /// Deletes the contexts idle at `now`; returns how many.
    async fn reap_idle(&self, now: Instant) -> usize {
        let Some(idle) = self.limits.idle else { return 0 };
        let ids: Vec<String> = self
            .map()
            .values()
            .filter(|c| c.idle_since(&self.sessions, now, idle))
            .map(|c| c.id.clone())
            .collect();
        for id in &ids {
            tracing::info!(context = %id, idle_ms = idle.as_millis() as u64, "deleting idle code context");
            self.delete(id).await;
        }
        ids.len()
    }

    /// A context's cwd, created when missing (unlike a command's, which must exist).
    fn prepare_cwd(&self, raw: &str) -> Result<PathBuf, ContextError> {
        let env = self.runtime.child_env(&Default::default());
        let path = self
            .runtime
            .expand_cwd(raw, &env)
            .map_err(|e| ContextError::Cwd {
                cwd: e.cwd,
                reason: e.reason,
            })?;
        std::fs::create_dir_all(&path).map_err(|e| ContextError::Cwd {
            cwd: raw.into(),
            reason: e.to_string(),
        })?;
        Ok(path)
    }

    async fn start_interpreter(
        self: &Arc<Self>,
        context: &Context,
    ) -> Result<Option<Arc<Interpreter>>, ContextError> {
        let fail = |reason: String| ContextError::Start {
            language: context.language.clone(),
            reason,
        };
        let env = self.runtime.child_env(&Default::default());
        Ok(Some(Arc::new(match &context.engine {
            Engine::Bash => return Ok(None),
            Engine::Jupyter(spec) => {
                let pooled =
                    if context.cwd.is_none() && self.python_spec().is_some_and(|p| p.name == spec.name) {
                        let k = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
                        self.refill_pool();
                        k.filter(JupyterKernel::is_alive)
                    } else {
                        None
                    };
                match pooled {
                    Some(k) => Interpreter::Jupyter(k),
                    None => Interpreter::Jupyter(
                        JupyterKernel::start(
                            spec,
                            &self.runtime.reaper,
                            env,
                            context.cwd.clone(),
                            self.kernel_dir(),
                        )
                        .await
                        .map_err(|e| fail(e.to_string()))?,
                    ),
                }
            }
            Engine::Python(python) => Interpreter::Python(
                BuiltinPython::start(
                    &self.runtime.reaper,
                    python.clone(),
                    &self.driver,
                    env,
                    context.cwd.clone(),
                )
                .map_err(|e| fail(e.to_string()))?,
            ),
        })))
    }

    /// Looks a context up.
    pub fn get(&self, id: &str) -> Option<CodeContext> {
        self.map().get(id).map(|c| c.wire(false))
    }

    /// All contexts, or those of one language.
    pub fn list(&self, language: Option<&str>) -> Vec<CodeContext> {
        let language = language.map(str::to_lowercase);
        let mut out: Vec<CodeContext> = self
            .map()
            .values()
            .filter(|c| language.as_ref().is_none_or(|l| *l == c.language))
            .map(|c| c.wire(false))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Deletes a context; false if unknown.
    pub async fn delete(&self, id: &str) -> bool {
        let Some(context) = self.map().remove(id) else {
            return false;
        };
        self.defaults.lock().await.retain(|_, v| v != id);
        if matches!(context.engine, Engine::Bash) {
            self.sessions.delete(id);
        }
        // Dropping the last reference to the interpreter kills it; a run in progress holds
        // one until it ends, so end it.
        if let Some(run) = context.current.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            run.request();
        }
        true
    }

    /// Deletes every context of a language; returns how many.
    pub async fn delete_language(&self, language: &str) -> usize {
        let ids: Vec<String> = self.list(Some(language)).into_iter().map(|c| c.id).collect();
        for id in &ids {
            self.delete(id).await;
        }
        ids.len()
    }

    /// Interrupts the run in progress in a context; false if the id is not a context.
    pub async fn interrupt(&self, id: &str) -> bool {
        let Some(context) = self.map().get(id).cloned() else {
            return false;
        };
        if matches!(context.engine, Engine::Bash) {
            self.sessions.interrupt(id);
            return true;
        }
        if let Some(run) = context.current.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            run.request();
        }
        true
    }

    /// Starts a run. `id` picks a context; else `language` picks (and lazily creates) its
    /// default context; an empty language runs the code as a shell command. The journal
    /// already holds `init` when this returns.
    pub async fn run(
        self: &Arc<Self>,
        id: Option<String>,
        language: Option<String>,
        code: String,
    ) -> Result<Arc<Journal>, ContextError> {
        if code.trim().is_empty() {
            return Err(ContextError::EmptyCode);
        }
        let context = match id.filter(|i| !i.is_empty()) {
            Some(id) => self.map().get(&id).cloned().ok_or(ContextError::NotFound(id))?,
            None => {
                let language = language.unwrap_or_default().to_lowercase();
                if language.is_empty() || language == "command" {
                    let commands = Arc::clone(&self.commands);
                    let req = RunCommandRequest {
                        command: Some(code),
                        ..Default::default()
                    };
                    let record = tokio::task::spawn_blocking(move || commands.start(req))
                        .await
                        .map_err(|e| ContextError::Start {
                            language: "command".into(),
                            reason: e.to_string(),
                        })??;
                    return Ok(Arc::clone(&record.journal));
                }
                self.default_context(&language).await?
            }
        };
        if matches!(context.engine, Engine::Bash) {
            let req = RunInSessionRequest {
                command: code,
                cwd: None,
                timeout: None,
            };
            return Ok(self.sessions.run(&context.id, req)?);
        }
        let journal = Journal::new(
            self.runtime
                .journal_path(&uuid::Uuid::new_v4().simple().to_string()),
        );
        // The slot is taken and the run's interrupts are reachable before `init` exists: a
        // client reacting to `init` at once must find this run, not an empty context.
        let Ok(slot) = Arc::clone(&context.interpreter).try_lock_owned() else {
            journal.push(&StreamEvent::init(&context.id, now_ms()));
            journal.finish(&StreamEvent::error(
                "ContextBusy",
                format!("context {} is running another execution", context.id),
                vec!["one execution at a time per context; wait for it or interrupt it".into()],
                now_ms(),
            ));
            return Ok(journal);
        };
        let interrupts = Arc::new(Interrupts::default());
        *context.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::clone(&interrupts));
        context.touch();
        journal.push(&StreamEvent::init(&context.id, now_ms()));
        let this = Arc::clone(self);
        let j = Arc::clone(&journal);
        tokio::spawn(async move {
            let terminal = this.execute(&context, slot, &code, &j, &interrupts).await;
            // Before `current` is cleared: the reaper counts idleness from the run's end.
            context.touch();
            {
                let mut current = context.current.lock().unwrap_or_else(|e| e.into_inner());
                if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &interrupts)) {
                    *current = None;
                }
            }
            j.finish(&terminal);
        });
        Ok(journal)
    }

    async fn default_context(self: &Arc<Self>, language: &str) -> Result<Arc<Context>, ContextError> {
        let mut defaults = self.defaults.lock().await;
        if let Some(c) = defaults.get(language).and_then(|id| self.map().get(id).cloned()) {
            return Ok(c);
        }
        let created = self.create(language, None).await?;
        defaults.insert(language.to_owned(), created.id.clone());
        self.map()
            .get(&created.id)
            .cloned()
            .ok_or(ContextError::NotFound(created.id))
    }

    /// Runs one cell in the interpreter of `slot` and returns the terminal event.
    async fn execute(
        self: &Arc<Self>,
        context: &Arc<Context>,
        mut slot: OwnedMutexGuard<Option<Arc<Interpreter>>>,
        code: &str,
        journal: &Arc<Journal>,
        interrupts: &Interrupts,
    ) -> StreamEvent {
        let started = Instant::now();
        let mut restarted = false;
        if !slot.as_ref().is_some_and(|i| i.is_alive()) {
            restarted = slot.is_some();
            match self.start_interpreter(context).await {
                Ok(i) => *slot = i,
                Err(e) => return StreamEvent::error("KernelStartFailed", e.to_string(), vec![], now_ms()),
            }
        }
        if restarted {
            journal.push(&StreamEvent {
                text: Some("the interpreter had died and was restarted; earlier state is lost\n".into()),
                ..StreamEvent::new(EventType::Stderr, now_ms())
            });
        }
        let Some(interpreter) = slot.clone() else {
            return StreamEvent::error("KernelStartFailed", "no interpreter".into(), vec![], now_ms());
        };
        // Interrupted while waiting for a (re)started interpreter: the queued cell is dropped
        // rather than started and interrupted half-way.
        let outcome = if interrupts.requested() > 0 {
            journal.push(&interrupted_event(
                "the execution was interrupted before it started",
                now_ms(),
            ));
            Outcome::Finished { failed: true }
        } else {
            interpreter.execute(code, journal, interrupts).await
        };
        match outcome {
            // The contract lets complete follow an error on the kernel path, and clients
            // wait for complete; so every finished cell ends with it.
            Outcome::Finished { .. } => StreamEvent::complete(started.elapsed().as_millis() as u64, now_ms()),
            Outcome::Died => {
                *slot = None;
                StreamEvent::error(
                    "KernelDied",
                    "the interpreter died during execution".into(),
                    vec!["the context restarts on its next run; its state is lost".into()],
                    now_ms(),
                )
            }
        }
    }

    /// Kills every interpreter (shutdown).
    pub fn kill_all(&self) {
        self.map().clear();
        self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// `result` event from a MIME bundle, `text/plain` renamed `text` as the contract says.
pub(crate) fn result_event(data: &Value, ts: i64) -> StreamEvent {
    let mut results = Map::new();
    if let Some(bundle) = data.as_object() {
        for (mime, value) in bundle {
            let key = if mime == "text/plain" {
                "text"
            } else {
                mime.as_str()
            };
            results.insert(key.to_owned(), value.clone());
        }
    }
    StreamEvent {
        results: Some(results),
        ..StreamEvent::new(EventType::Result, ts)
    }
}

/// The `error` event of a cell that was interrupted where the interpreter could not report it
/// itself: named like the interpreter's own report, so clients need to match only one name.
pub(crate) fn interrupted_event(why: &str, ts: i64) -> StreamEvent {
    StreamEvent::error("KeyboardInterrupt", why.into(), vec![], ts)
}

/// `error` event from a Jupyter-style `{ename, evalue, traceback}` object.
pub(crate) fn error_event(content: &Value, ts: i64) -> StreamEvent {
    let text = |k: &str| content[k].as_str().unwrap_or_default().to_owned();
    let traceback = content["traceback"]
        .as_array()
        .map(|a| a.iter().filter_map(|l| l.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    StreamEvent::error(&text("ename"), text("evalue"), traceback, ts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn interrupts_made_before_or_during_a_wait_are_both_seen() {
        let interrupts = Arc::new(Interrupts::default());
        // Made before anyone waits (before the engine started the cell): remembered.
        interrupts.request();
        assert_eq!(interrupts.more_than(0).await, 1);
        // Made while the engine waits: wakes it.
        let waiter = tokio::spawn({
            let interrupts = Arc::clone(&interrupts);
            async move { interrupts.more_than(1).await }
        });
        tokio::task::yield_now().await;
        interrupts.request();
        let seen = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the waiter wakes")
            .unwrap();
        assert_eq!(seen, 2);
    }
}

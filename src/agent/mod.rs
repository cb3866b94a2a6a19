//! The agent that runs inside a sandbox: configuration, the shared [`Runtime`] context,
//! and [`serve`], which wires the domain modules to the HTTP router.
//!
//! Must not know about the orchestrator. Async at the edges; domain modules keep blocking work
//! on their own threads.

pub mod command;
pub mod config;
pub mod env;
pub mod files;
pub mod http;
pub mod init;
pub mod install;
pub mod isolate;
pub mod isolated;
pub mod kernel;
pub mod metrics;
pub mod openapi;
pub mod output;
pub mod process;
pub mod proxy;
pub mod pty;
pub mod seed;
pub mod session;
pub mod stream;
pub mod watch;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

pub use config::Config;
use env::EnvMap;
use process::Reaper;

/// What every execution needs from execd itself, built once at start.
pub struct Runtime {
    /// The one reaper of all children.
    pub reaper: Arc<Reaper>,
    /// execd's own environment, minus its secrets: the base of every child's environment.
    base_env: EnvMap,
    /// The `EXECD_ENVS` file, re-read for every command.
    envs_file: Option<PathBuf>,
    /// Where journals and logs live.
    pub state_dir: PathBuf,
    /// execd's working directory; relative paths resolve against it.
    pub cwd: PathBuf,
}

impl Runtime {
    /// Builds the runtime from the configuration and the process environment.
    pub fn new(config: &Config, reaper: Arc<Reaper>) -> anyhow::Result<Self> {
        let state_dir = config.state_dir()?;
        for sub in ["journals", "commands", "sessions", "kernels"] {
            std::fs::create_dir_all(state_dir.join(sub))
                .with_context(|| format!("cannot create {}", state_dir.join(sub).display()))?;
        }
        let base_env: EnvMap = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| !config::SECRET_VARS.contains(&k.as_str()))
            .collect();
        Ok(Self {
            reaper,
            base_env,
            envs_file: config.envs_file.clone(),
            state_dir,
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
        })
    }

    /// The environment of a new child: execd's own, then the `EXECD_ENVS` file (re-read now),
    /// then the request's literal values.
    pub fn child_env(&self, request: &std::collections::BTreeMap<String, String>) -> EnvMap {
        let mut env = self.base_env.clone();
        if let Some(path) = &self.envs_file {
            match std::fs::read_to_string(path) {
                Ok(content) => env::parse_env_file(&content, &mut env),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read EXECD_ENVS")
                }
            }
        }
        env.extend(request.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    /// The working directory a request names: `raw` expanded against `env`, relative to
    /// execd's own cwd, and an existing directory (commands and sessions). Blocking (stat).
    pub fn resolve_cwd(&self, raw: &str, env: &EnvMap) -> Result<PathBuf, CwdError> {
        let invalid = |reason: String| CwdError {
            cwd: raw.to_owned(),
            reason,
        };
        let path = self.expand_cwd(raw, env)?;
        match std::fs::metadata(&path) {
            Ok(m) if m.is_dir() => Ok(path),
            Ok(_) => Err(invalid("not a directory".into())),
            Err(e) => Err(invalid(e.to_string().to_lowercase())),
        }
    }

    /// `raw` expanded against `env` (`$VAR`, `~`) and made absolute against execd's own cwd,
    /// without looking at the filesystem: the one way every request's cwd is read.
    pub fn expand_cwd(&self, raw: &str, env: &EnvMap) -> Result<PathBuf, CwdError> {
        let expanded = env::expand_path(raw, |k| env.get(k).cloned()).map_err(|e| CwdError {
            cwd: raw.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(self.cwd.join(expanded))
    }

    /// execd's own environment (secrets removed), against which request paths expand.
    pub fn env(&self) -> &EnvMap {
        &self.base_env
    }

    /// The shell for shell text: bash when the image has one, else sh.
    pub fn shell(&self, env: &EnvMap) -> (PathBuf, &'static str) {
        let path = env
            .get("PATH")
            .map(String::as_str)
            .unwrap_or("/usr/local/bin:/usr/bin:/bin");
        for name in ["bash", "sh"] {
            if let Some(p) = env::resolve_program(name, Some(path), Path::new("/")) {
                return (p, name);
            }
        }
        (PathBuf::from("/bin/sh"), "sh")
    }

    /// Where the journal of execution `id` spills.
    pub fn journal_path(&self, id: &str) -> PathBuf {
        self.state_dir.join("journals").join(format!("{id}.sse"))
    }
}

/// A request's working directory that cannot be used (a 400).
#[derive(Debug, thiserror::Error)]
#[error("invalid cwd {cwd:?}: {reason}")]
pub struct CwdError {
    /// The cwd as given.
    pub cwd: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-22T00:12:33.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    crate::wire::time::format_ms(d.as_millis() as i64)
}

/// execd's own binary, re-executed as the jail of isolated sessions (robust to the file being
/// replaced on disk while execd runs).
pub const SELF_EXE: &str = "/proc/self/exe";

fn isolation_settings(config: &Config, state_dir: &Path) -> isolated::Settings {
    let nonzero = |v: u64| (v > 0).then_some(v);
    isolated::Settings {
        namespaces: false,
        allow_degraded: config.isolated_allow_degraded,
        root: false,
        landlock_abi: 0,
        state_dir: state_dir.to_path_buf(),
        allowed_writable: config.isolated_allowed_writable.clone(),
        limits: isolate::cgroup::Limits {
            memory_bytes: nonzero(config.isolated_memory_mb).map(|m| m << 20),
            pids: nonzero(config.isolated_pids),
            cpu_millis: nonzero(config.isolated_cpu_millis),
        },
        gc_interval: std::time::Duration::from_millis(config.isolated_gc_interval_ms.max(10)),
    }
}

/// Events a file watch keeps for clients that reconnect with `Last-Event-ID`.
const WATCH_HISTORY: usize = 1024;
/// How long a file watch without clients stays alive so that a reconnect can resume.
const WATCH_LINGER: std::time::Duration = std::time::Duration::from_secs(60);

/// Shared state of the HTTP layer.
#[derive(Clone)]
pub struct AppState {
    /// Access token, if one is required.
    pub token: Option<Arc<str>>,
    /// Commands.
    pub commands: Arc<command::Commands>,
    /// Bash sessions.
    pub sessions: Arc<session::Sessions>,
    /// Code contexts.
    pub contexts: Arc<kernel::Contexts>,
    /// Interactive terminal sessions.
    pub ptys: Arc<pty::Ptys>,
    /// The port proxy into the sandbox.
    pub proxy: Arc<proxy::Proxy>,
    /// Path resolution for the file routes.
    pub files: Arc<files::Files>,
    /// Shared file watches.
    pub watches: Arc<watch::Watches>,
    /// The metrics sampler.
    pub metrics: Arc<metrics::Monitor>,
    /// Isolated sessions.
    pub isolation: isolated::Handle,
    /// Set while init runs the pre-start hook: `/ping` answers 503 `STARTING` until it clears.
    pub starting: Arc<AtomicBool>,
}

impl AppState {
    /// Interrupts whatever `id` names, as upstream's `DELETE /command` and `DELETE /code` do:
    /// a code context's running cell, a command's process group, or a bash session (closed).
    /// Returns false when nothing has that id.
    pub async fn interrupt(&self, id: &str) -> bool {
        self.contexts.interrupt(id).await || self.commands.interrupt(id) || self.sessions.delete(id)
    }

    /// Kills every process execd started (shutdown).
    pub fn kill_all(&self) {
        self.commands.kill_all();
        self.sessions.kill_all();
        self.contexts.kill_all();
        self.ptys.kill_all();
        if let Some(isolation) = self.isolation.now() {
            isolation.kill_all();
        }
    }
}

/// Runs the agent until shutdown. In init mode (`entrypoint` given) execd also runs the
/// entrypoint as its child, forwards signals to it, and returns its exit code.
pub async fn serve(config: Config, entrypoint: Option<Vec<String>>) -> anyhow::Result<i32> {
    process::become_subreaper();
    let reaper = Reaper::start().context("cannot watch SIGCHLD")?;
    let runtime = Arc::new(Runtime::new(&config, Arc::clone(&reaper))?);
    let addr = SocketAddr::new(config.listen_host(entrypoint.is_some()), config.port);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    let pre_start = match &config.lifecycle {
        Some(text) => init::pre_start_hook(text)?,
        None => None,
    };
    if pre_start.is_some() && entrypoint.is_none() {
        tracing::warn!("the preStart hook runs only in init mode (execd init -- <entrypoint>); ignored");
    }
    let pre_start = pre_start.filter(|_| entrypoint.is_some());
    let commands = command::Commands::new(Arc::clone(&runtime));
    let sessions = session::Sessions::new(
        Arc::clone(&runtime),
        session::Limits {
            max: config.max_sessions,
            idle: config.session_idle_timeout(),
        },
    );
    let contexts = kernel::Contexts::new(
        Arc::clone(&runtime),
        Arc::clone(&commands),
        Arc::clone(&sessions),
        config.no_jupyter,
        config.kernel_pool,
        kernel::Limits {
            max: config.max_contexts,
            idle: config.session_idle_timeout(),
        },
    );
    let state = AppState {
        token: config.token().map(Arc::from),
        commands,
        sessions,
        contexts,
        ptys: pty::Ptys::new(Arc::clone(&runtime)),
        proxy: Arc::new(proxy::Proxy::new(
            local.port(),
            axum::http::HeaderName::from_static(http::TOKEN_HEADER),
        )),
        files: Arc::new(files::Files::new(runtime.env().clone(), runtime.cwd.clone())),
        watches: watch::Watches::new(WATCH_HISTORY, WATCH_LINGER),
        metrics: metrics::Monitor::start(metrics::Sampler::new(PathBuf::from("/"), runtime.cwd.clone())),
        isolation: {
            let (runtime, state_dir) = (Arc::clone(&runtime), config.state_dir()?);
            let settings = isolation_settings(&config, &runtime.state_dir);
            let init_mode = match &entrypoint {
                None => crate::wire::isolated::InitMode::None,
                Some(_) if std::process::id() == 1 => crate::wire::isolated::InitMode::Pid1,
                Some(_) => crate::wire::isolated::InitMode::Subreaper,
            };
            // The probe's jail may be reaped by the reaper; it reads the result from its socket.
            isolated::Handle::start(
                move || isolate::probe(std::path::Path::new(SELF_EXE), &state_dir),
                move |probe| {
                    isolated::Isolation::new(runtime, PathBuf::from(SELF_EXE), probe, settings, init_mode)
                },
            )
        },
        starting: Arc::new(AtomicBool::new(pre_start.is_some())),
    };
    if state.token.is_none() && !local.ip().is_loopback() {
        tracing::warn!(
            %local,
            "NO ACCESS TOKEN: anyone who can reach {local} can run commands as execd's user; \
             set EXECD_ACCESS_TOKEN, or EXECD_HOST=127.0.0.1"
        );
    }
    // The one line on stdout that scripts and tests wait for.
    println!("listening on {local}");
    tracing::info!(%local, auth = state.token.is_some(), "execd ready");

    let app = http::router(state.clone());
    let limits = config.serve_limits();
    let code = match entrypoint {
        Some(argv) => {
            let mut signals = init::Signals::install();
            // Without a hook the entrypoint starts before the API answers, so one that cannot
            // start ends execd before any `/ping` succeeds. With one, the API serves from the
            // start (503 `STARTING`) and the entrypoint waits for the hook.
            let early = match pre_start {
                None => Some(init::start_entrypoint(&runtime, &argv)?),
                Some(_) => None,
            };
            let boot = async {
                let child = match early {
                    Some(child) => child,
                    None => {
                        if let Some(hook) = &pre_start {
                            if let Err(e) = init::run_pre_start(&runtime, hook, &mut signals).await {
                                // The container's log says why it ended; the orchestrator shows it.
                                eprintln!("execd: {e}");
                                return Ok(e.exit_code());
                            }
                            state.starting.store(false, Ordering::Release);
                        }
                        init::start_entrypoint(&runtime, &argv)?
                    }
                };
                anyhow::Ok(init::supervise(child, &mut signals).await)
            };
            tokio::select! {
                r = crate::serve::serve(listener, app, limits, std::future::pending()) => { r?; 0 }
                code = boot => code?,
            }
        }
        None => {
            // On SIGTERM/SIGINT: kill every command so their streams end with a terminal
            // event, let connections drain, and give up on stragglers after a few seconds.
            let drained = Arc::new(tokio::sync::Notify::new());
            let graceful = crate::serve::serve(listener, app, limits, {
                let drained = Arc::clone(&drained);
                async move { drained.notified().await }
            });
            tokio::select! {
                r = graceful => r?,
                () = async {
                    init::shutdown_signal().await;
                    state.kill_all();
                    drained.notify_one();
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                } => {}
            }
            0
        }
    };
    state.kill_all();
    Ok(code)
}

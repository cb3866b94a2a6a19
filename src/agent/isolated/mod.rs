//! Isolated sessions (`/v1/isolated/*`): the registry, the capabilities report, runs
//! (foreground into a journal, background into a log), deletion and idle collection.
//!
//! A session is one jail process tree started through execd's reaper (`execd __jail`, see
//! `agent::isolate`) and a control socket; a reader thread per session turns the jail's
//! messages into run exits. Knows nothing of HTTP. Blocking work (spawn, socket sends, file
//! I/O) runs on blocking threads; supervisors are tasks.

pub mod files;
pub mod plan;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;

use super::isolate::cgroup::{Limits, SessionCgroup};
use super::isolate::proto::{self, FromJail, ToJail};
use super::isolate::{self, Probe};
use super::output::{exit_event, PumpThread, Source};
use super::process::{self, ExitStatus, Output, SpawnSpec};
use super::stream::{Journal, OutputKind};
use super::{now_ms, rfc3339, Runtime};
use crate::wire::isolated::{
    CapabilitiesResponse, CreateIsolatedSessionRequest, Hardening, HardeningLayerState, InitMode,
    IsolatedBackgroundRunResponse, IsolatedCreateSessionResponse, IsolatedRunRequest, IsolatedRunStatus,
    IsolatedSessionList, IsolatedSessionStatus, IsolatedSessionSummary, IsolatedWorkspaceSpec, LayerState,
    MountMode, SessionState,
};
use crate::wire::StreamEvent;
use plan::{Mount, Plan};

/// Bytes a background run's log keeps, and the most one logs request returns.
pub const LOG_CAP: u64 = 16 << 20;
/// Grace between the SIGINT of a timed-out run and SIGKILL of its group.
const INTERRUPT_GRACE: Duration = Duration::from_secs(3);

/// Why an isolated-session request failed.
#[derive(Debug, thiserror::Error)]
pub enum IsolatedError {
    /// Isolation is unavailable here (503 SERVICE_UNAVAILABLE).
    #[error("isolation unavailable: {0}")]
    Unavailable(String),
    /// This request needs something the host lacks (503 NOT_SUPPORTED).
    #[error("{0}")]
    NotSupported(String),
    /// The request is invalid (400).
    #[error("{0}")]
    Invalid(String),
    /// No such session (404).
    #[error("session not found: {0}")]
    NotFound(String),
    /// No such run (404).
    #[error("run not found: {0}")]
    RunNotFound(String),
    /// The session no longer accepts runs (409).
    #[error("session {0} is not active")]
    NotActive(String),
    /// The mount is read-only for this operation (403).
    #[error("{0} is read-only in this session")]
    ReadOnly(String),
    /// Nothing to diff (404).
    #[error("nothing was persisted in this session")]
    NothingPersisted,
    /// The jail could not be built or reached (500).
    #[error("cannot start the jail: {0}")]
    Jail(String),
    /// A file operation failed.
    #[error(transparent)]
    Files(#[from] super::files::FilesError),
}

/// Operator settings and what the probe found, fixed at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespaces work (full mode).
    pub namespaces: bool,
    /// Sessions may run in degraded mode when namespaces do not work.
    pub allow_degraded: bool,
    /// execd is root.
    pub root: bool,
    /// Landlock ABI of the kernel.
    pub landlock_abi: i32,
    /// execd's state directory (masked in every jail).
    pub state_dir: PathBuf,
    /// Roots under which `extra_writable` and bind sources may lie.
    pub allowed_writable: Vec<PathBuf>,
    /// cgroup limits per session.
    pub limits: Limits,
    /// How often idle sessions are collected.
    pub gc_interval: Duration,
}

impl Settings {
    /// 400 unless `path` lies under an allowlisted root.
    pub fn check_allowed(&self, path: &Path, what: &str) -> Result<(), IsolatedError> {
        if self.allowed_writable.iter().any(|root| path.starts_with(root)) {
            Ok(())
        } else {
            Err(IsolatedError::Invalid(format!(
                "{what} {} is outside the writable allowlist",
                path.display()
            )))
        }
    }
}

/// How a run ended, as the jail reported it.
#[derive(Debug, Clone)]
enum RunEnd {
    Exited(ExitStatus),
    Failed(String),
    SessionGone,
}

enum RunState {
    Running,
    Finished { end: RunEnd, at: SystemTime },
}

/// A background run.
pub struct BackgroundRun {
    id: String,
    started_at: SystemTime,
    state: Mutex<RunState>,
    log: PathBuf,
}

/// One session.
pub struct Session {
    /// Canonical UUID.
    pub id: String,
    created_at: SystemTime,
    plan: Plan,
    dir: PathBuf,
    env: Vec<(String, String)>,
    shell: PathBuf,
    /// The send side of the control socket; sends are short and never held across `.await`.
    ctl: Mutex<Option<OwnedFd>>,
    /// Exit notifications by run handle, filled by the reader thread.
    waiters: Mutex<HashMap<u64, oneshot::Sender<RunEnd>>>,
    /// Background runs by id.
    runs: Mutex<HashMap<String, Arc<BackgroundRun>>>,
    status: Mutex<IsolatedSessionStatus>,
    /// Last time a run started or ended (idle collection counts from here).
    last_activity: Mutex<SystemTime>,
    last_run_at: Mutex<Option<SystemTime>>,
    /// Runs in flight; idle collection waits for zero.
    busy: AtomicUsize,
    /// Pid of the jail's outer stage (host pid namespace).
    jail_pid: i32,
    /// No namespaces: run pids are host pids.
    degraded: bool,
    /// Pids of runs (degraded mode only: host pids, killed on delete).
    run_pids: Mutex<Vec<i32>>,
    cgroup: Option<SessionCgroup>,
    /// Resolves when the jail's outer stage is reaped.
    jail_exit: tokio::sync::Mutex<Option<oneshot::Receiver<process::Exit>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain assignments only: a poisoned lock still holds a valid value.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Session {
    fn status(&self) -> IsolatedSessionStatus {
        *lock(&self.status)
    }

    fn send(&self, msg: &ToJail, fds: &[std::os::fd::RawFd]) -> Result<(), IsolatedError> {
        let ctl = lock(&self.ctl);
        let fd = ctl
            .as_ref()
            .ok_or_else(|| IsolatedError::NotActive(self.id.clone()))?;
        proto::send(fd.as_fd(), msg, fds).map_err(|e| IsolatedError::Jail(e.to_string()))
    }

    fn touch(&self) {
        *lock(&self.last_activity) = SystemTime::now();
    }

    fn idle_remaining(&self) -> Option<i64> {
        let idle = self.plan.idle_timeout_seconds;
        if idle == 0 {
            return None;
        }
        let since = SystemTime::now()
            .duration_since(*lock(&self.last_activity))
            .unwrap_or_default()
            .as_secs() as i64;
        Some(if self.busy.load(Ordering::SeqCst) > 0 {
            idle
        } else {
            (idle - since).max(0)
        })
    }

    fn last_run_at(&self) -> String {
        rfc3339(lock(&self.last_run_at).unwrap_or(self.created_at))
    }

    /// The mounts (for the files API).
    pub fn mounts(&self) -> &[Mount] {
        &self.plan.mounts
    }

    /// The session's uid and gid (files written through the API are chowned to them).
    pub fn identity(&self) -> (u32, u32) {
        (self.plan.uid, self.plan.gid)
    }

    /// The session's directory on the host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state(&self) -> SessionState {
        let p = &self.plan;
        SessionState {
            status: self.status(),
            created_at: rfc3339(self.created_at),
            last_run_at: self.last_run_at(),
            idle_remaining_seconds: self.idle_remaining(),
            profile: p.profile,
            workspace: p.legacy_workspace.then(|| IsolatedWorkspaceSpec {
                path: p.mounts[0].path.display().to_string(),
                mode: Some(p.mounts[0].mode),
            }),
            overlays: p.mounts.iter().map(Mount::spec).collect(),
            extra_writable: p.extra_writable.clone(),
            binds: p.binds.clone(),
            share_net: p.share_net,
            env_passthrough: p.env_passthrough.clone(),
            uid: p.uid,
            gid: p.gid,
            uid_mode: p.uid_mode,
            idle_timeout_seconds: p.idle_timeout_seconds,
        }
    }
}

/// What starting a run produced.
pub enum Started {
    /// A foreground run: stream its journal.
    Foreground(Arc<Journal>),
    /// A background run.
    Background(IsolatedBackgroundRunResponse),
}

/// How long after start the probe waits: on a 2-core machine its jail doubled the time to the
/// first `/ping` when it ran at once.
const PROBE_DELAY: std::time::Duration = std::time::Duration::from_millis(30);

/// The registry as it becomes ready. Its start-up probe builds a throwaway jail (about 10 ms),
/// which execd's own start must not wait for: it runs in the background, and the isolated
/// routes wait for it on first use.
#[derive(Clone)]
pub struct Handle(tokio::sync::watch::Receiver<Option<Arc<Isolation>>>);

impl Handle {
    /// Runs `probe` on a blocking thread, then builds the registry with `build`.
    pub fn start(
        probe: impl FnOnce() -> Probe + Send + 'static,
        build: impl FnOnce(Probe) -> Arc<Isolation> + Send + 'static,
    ) -> Self {
        let (tx, rx) = tokio::sync::watch::channel(None);
        tokio::spawn(async move {
            // Let execd answer its first requests before the probe competes for the CPU.
            tokio::time::sleep(PROBE_DELAY).await;
            match tokio::task::spawn_blocking(probe).await {
                Ok(probe) => {
                    let _ = tx.send(Some(build(probe)));
                }
                // Dropping the sender tells waiters the probe failed.
                Err(e) => tracing::error!(error = %e, "the isolation probe failed"),
            }
        });
        Self(rx)
    }

    /// The registry, once the probe has run.
    pub async fn ready(&self) -> Result<Arc<Isolation>, IsolatedError> {
        let mut rx = self.0.clone();
        let ready = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| IsolatedError::Unavailable("the isolation probe failed".into()))?;
        Ok(ready.clone().expect("waited for Some"))
    }

    /// The registry if the probe has already run.
    pub fn now(&self) -> Option<Arc<Isolation>> {
        self.0.borrow().clone()
    }
}

/// All isolated sessions of this execd.
pub struct Isolation {
    runtime: Arc<Runtime>,
    exe: PathBuf,
    settings: Settings,
    probe: Probe,
    init_mode: InitMode,
    cgroups: Result<(), String>,
    self_cgroup: String,
    /// Sessions by id; lookups and inserts only, never held across `.await`.
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    next_run: AtomicU64,
}

impl Isolation {
    /// The registry, from the start-up probe; also starts idle collection.
    pub fn new(
        runtime: Arc<Runtime>,
        exe: PathBuf,
        probe: Probe,
        mut settings: Settings,
        init_mode: InitMode,
    ) -> Arc<Self> {
        settings.namespaces = probe.namespaces.is_ok();
        settings.root = probe.root;
        settings.landlock_abi = probe.landlock_abi;
        let self_cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        // Try the cgroup tree once: a session cgroup that cannot be made is reported, not fatal.
        let cgroups = SessionCgroup::create(
            Path::new("/sys/fs/cgroup"),
            &self_cgroup,
            &format!("execd-iso-probe-{}", std::process::id()),
            settings.limits,
        )
        .map(|cg| cg.remove())
        .map_err(|e| e.to_string());
        // Sessions do not survive a restart: drop what a previous execd left behind.
        if let Ok(entries) = std::fs::read_dir(settings.state_dir.join("isolated")) {
            for e in entries.flatten() {
                if e.file_name() != ".probe" {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let gc_interval = settings.gc_interval;
        let iso = Arc::new(Self {
            runtime,
            exe,
            settings,
            probe,
            init_mode,
            cgroups,
            self_cgroup,
            sessions: Mutex::new(HashMap::new()),
            next_run: AtomicU64::new(1),
        });
        let weak = Arc::downgrade(&iso);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(gc_interval);
            loop {
                tick.tick().await;
                match weak.upgrade() {
                    Some(iso) => iso.collect_idle().await,
                    None => return,
                }
            }
        });
        iso
    }

    fn available(&self) -> bool {
        self.settings.namespaces || self.settings.allow_degraded
    }

    fn require_available(&self) -> Result<(), IsolatedError> {
        if self.available() {
            Ok(())
        } else {
            Err(IsolatedError::Unavailable(self.unavailable_reason()))
        }
    }

    fn unavailable_reason(&self) -> String {
        match &self.probe.namespaces {
            Ok(()) => String::new(),
            Err(e) => format!("namespaces are denied here ({e})"),
        }
    }

    /// `GET /v1/isolated/capabilities`.
    pub fn capabilities(&self) -> CapabilitiesResponse {
        let s = &self.settings;
        let layer = |state, message: String| HardeningLayerState {
            state,
            message: Some(message),
        };
        let namespaces = match &self.probe.namespaces {
            Ok(()) => layer(
                LayerState::Active,
                "user, mount, pid, ipc, uts, cgroup (+ net without share_net); read-only root, overlays"
                    .into(),
            ),
            Err(e) => layer(LayerState::Degraded, format!("denied by the host: {e}")),
        };
        let landlock = if s.landlock_abi == 0 {
            layer(LayerState::Unsupported, "the kernel has no landlock".into())
        } else if self.probe.landlock_status.starts_with("fully") {
            layer(
                LayerState::Active,
                format!("ABI {}; {}", s.landlock_abi, self.probe.landlock_status),
            )
        } else {
            layer(
                LayerState::Degraded,
                format!("ABI {}; {}", s.landlock_abi, self.probe.landlock_status),
            )
        };
        let cap_drop = if s.root || s.namespaces {
            layer(
                LayerState::Active,
                "bounding set emptied, all capability sets cleared".into(),
            )
        } else {
            layer(
                LayerState::Degraded,
                "execd is unprivileged and has no user namespace: nothing to drop beyond its own".into(),
            )
        };
        let cgroups = match &self.cgroups {
            Ok(()) => layer(LayerState::Active, format!("{:?}", s.limits)),
            Err(e) => layer(LayerState::Degraded, format!("cgroup tree not writable: {e}")),
        };
        let degraded_note = (!s.namespaces).then(|| {
            if s.allow_degraded {
                format!(
                    "degraded mode: {}; runs keep landlock, seccomp, no_new_privs, rlimits and the \
                     identity switch, but share execd's pid, mount and network namespaces; overlay \
                     mounts are read-only and diff/commit are unavailable",
                    self.unavailable_reason()
                )
            } else {
                format!(
                    "{}; start execd with --isolated-allow-degraded to run sessions without namespaces",
                    self.unavailable_reason()
                )
            }
        });
        CapabilitiesResponse {
            available: self.available(),
            isolator: "execd".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            message: degraded_note,
            setpriv_available: self.available(),
            userns_available: s.namespaces,
            commit_supported: s.namespaces,
            diff_supported: s.namespaces,
            hardening: Hardening {
                init_mode: self.init_mode,
                signal_shield: self.init_mode == InitMode::Pid1,
                cap_drop,
                seccomp: layer(
                    LayerState::Active,
                    format!(
                        "denylist of {} syscalls (EPERM), clone3 ENOSYS",
                        isolate::seccomp::DENYLIST.len()
                    ),
                ),
                landlock,
                ebpf: layer(LayerState::Unsupported, "not built into this execd".into()),
                namespaces,
                cgroups,
                no_new_privs: layer(LayerState::Active, "no_new_privs set; RLIMIT_CORE 0".into()),
            },
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Session>>> {
        lock(&self.sessions)
    }

    /// Looks a session up (503 when isolation is unavailable, else 404 when unknown).
    pub fn get(&self, id: &str) -> Result<Arc<Session>, IsolatedError> {
        self.require_available()?;
        self.map()
            .get(id)
            .cloned()
            .ok_or_else(|| IsolatedError::NotFound(id.to_owned()))
    }

    /// `GET /v1/isolated/sessions`.
    pub fn list(&self) -> Result<IsolatedSessionList, IsolatedError> {
        self.require_available()?;
        let mut sessions: Vec<IsolatedSessionSummary> = self
            .map()
            .values()
            .map(|s| IsolatedSessionSummary {
                session_id: s.id.clone(),
                status: s.status(),
                created_at: rfc3339(s.created_at),
                last_run_at: s.last_run_at(),
                idle_remaining_seconds: s.idle_remaining(),
            })
            .collect();
        sessions.sort_by(|a, b| a.created_at.cmp(&b.created_at));
        Ok(IsolatedSessionList { sessions })
    }

    /// `GET /v1/isolated/session/{sid}`.
    pub fn state(&self, id: &str) -> Result<SessionState, IsolatedError> {
        Ok(self.get(id)?.state())
    }

    /// Validates and creates a session; returns once its jail is built. Blocking.
    pub fn create(
        self: &Arc<Self>,
        req: CreateIsolatedSessionRequest,
    ) -> Result<IsolatedCreateSessionResponse, IsolatedError> {
        self.require_available()?;
        let mut plan = plan::plan(&req, &self.settings)?;
        let id = uuid::Uuid::new_v4().to_string();
        let dir = self.settings.state_dir.join("isolated").join(&id);
        let result = self.start_jail(&id, &dir, &mut plan);
        match result {
            Ok(session) => {
                let resp = IsolatedCreateSessionResponse {
                    session_id: id.clone(),
                    created_at: rfc3339(session.created_at),
                };
                self.map().insert(id, session);
                Ok(resp)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    fn start_jail(
        self: &Arc<Self>,
        id: &str,
        dir: &Path,
        plan: &mut Plan,
    ) -> Result<Arc<Session>, IsolatedError> {
        let cgroup = match &self.cgroups {
            Ok(()) => SessionCgroup::create(
                Path::new("/sys/fs/cgroup"),
                &self.self_cgroup,
                &format!("execd-iso-{id}"),
                self.settings.limits,
            )
            .map_err(|e| tracing::warn!(error = %e, "no cgroup for isolated session"))
            .ok(),
            Err(_) => None,
        };
        let procs = cgroup
            .as_ref()
            .map(SessionCgroup::procs_files)
            .unwrap_or_default();
        let spec = match plan::jail_spec(plan, &self.settings, dir, procs) {
            Ok(spec) => spec,
            Err(e) => {
                if let Some(cg) = &cgroup {
                    cg.remove();
                }
                return Err(e);
            }
        };
        let mut env = plan::session_env(self.runtime.env(), plan.profile, plan.env_passthrough.as_ref());
        if !self.settings.namespaces {
            env.insert("TMPDIR".into(), dir.join("tmp").display().to_string());
        }
        let (shell, _) = self.runtime.shell(&env);
        let (ours, theirs) = isolate::control_pair().map_err(|e| IsolatedError::Jail(e.to_string()))?;
        let child = self
            .runtime
            .reaper
            .spawn(SpawnSpec {
                fd3: Some(theirs),
                stdout: Output::Null,
                ..SpawnSpec::new(self.exe.clone(), vec!["execd".into(), isolate::JAIL_ARG.into()])
            })
            .map_err(|e| IsolatedError::Jail(e.to_string()));
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                if let Some(cg) = &cgroup {
                    cg.remove();
                }
                return Err(e);
            }
        };
        let cgroup_procs = cgroup
            .as_ref()
            .map(SessionCgroup::procs_files)
            .unwrap_or_default();
        let jail_pid = child.pid;
        let fail = |e: IsolatedError| {
            process::signal_group(jail_pid, nix::sys::signal::Signal::SIGKILL);
            kill_procs(&cgroup_procs);
            e
        };
        let _ = nix::sys::socket::setsockopt(
            &ours,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(10, 0),
        );
        if let Err(e) = proto::send(ours.as_fd(), &spec, &[]) {
            return Err(fail(IsolatedError::Jail(e.to_string())));
        }
        let mut buf = Vec::new();
        match proto::recv::<FromJail>(ours.as_fd(), &mut buf) {
            Ok((FromJail::Ready { .. }, _)) => {}
            Ok((FromJail::Failed { step, error }, _)) => {
                return Err(fail(IsolatedError::Jail(format!("{step}: {error}"))))
            }
            Ok(_) => return Err(fail(IsolatedError::Jail("unexpected answer".into()))),
            Err(e) => return Err(fail(IsolatedError::Jail(e.to_string()))),
        }
        let _ = nix::sys::socket::setsockopt(
            &ours,
            nix::sys::socket::sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(0, 0),
        );
        let reader_fd = ours
            .try_clone()
            .map_err(|e| fail(IsolatedError::Jail(e.to_string())))?;
        let now = SystemTime::now();
        let session = Arc::new(Session {
            id: id.to_owned(),
            created_at: now,
            plan: plan.clone(),
            dir: dir.to_path_buf(),
            env: env.into_iter().collect(),
            shell,
            ctl: Mutex::new(Some(ours)),
            waiters: Mutex::new(HashMap::new()),
            runs: Mutex::new(HashMap::new()),
            status: Mutex::new(IsolatedSessionStatus::Active),
            last_activity: Mutex::new(now),
            last_run_at: Mutex::new(None),
            busy: AtomicUsize::new(0),
            jail_pid: child.pid,
            degraded: !self.settings.namespaces,
            run_pids: Mutex::new(Vec::new()),
            cgroup,
            jail_exit: tokio::sync::Mutex::new(Some(child.exit)),
        });
        let weak = Arc::downgrade(&session);
        std::thread::Builder::new()
            .name(format!("iso-{}", &id[..8]))
            .spawn(move || read_jail(weak, reader_fd))
            .map_err(|e| fail(IsolatedError::Jail(e.to_string())))?;
        Ok(session)
    }

    /// Starts a run. Blocking (socket send, log file); call from a blocking thread.
    pub fn start_run(&self, sid: &str, req: IsolatedRunRequest) -> Result<Started, IsolatedError> {
        let session = self.get(sid)?;
        if req.code.trim().is_empty() {
            return Err(IsolatedError::Invalid("code must not be blank".into()));
        }
        let timeout = match req.timeout_seconds {
            None | Some(0) => None,
            Some(s) if s < 0 => {
                return Err(IsolatedError::Invalid(
                    "timeout_seconds must not be negative".into(),
                ))
            }
            Some(s) => Some(Duration::from_secs(s as u64)),
        };
        let mut env = session.env.clone();
        for (k, v) in req.envs.iter().flatten() {
            if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                return Err(IsolatedError::Invalid(format!("bad variable {k:?}")));
            }
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        if req.code.contains('\0') {
            return Err(IsolatedError::Invalid("code contains a NUL byte".into()));
        }
        let background = req.background.unwrap_or(false);
        let first = &session.plan.mounts[0];
        if background && (first.mode == MountMode::Ro || (first.mode == MountMode::Overlay && !first.persist))
        {
            return Err(IsolatedError::Invalid(
                "background runs need a writable first mount (rw, or overlay with persist)".into(),
            ));
        }
        if session.status() != IsolatedSessionStatus::Active {
            return Err(IsolatedError::NotActive(sid.to_owned()));
        }
        let run_id = uuid::Uuid::new_v4().to_string();
        let handle = self.next_run.fetch_add(1, Ordering::Relaxed);
        let argv = vec![
            session.shell.display().to_string(),
            "-c".to_owned(),
            req.code.clone(),
        ];
        let cwd = first.path.clone();
        let (exit_tx, exit_rx) = oneshot::channel();
        lock(&session.waiters).insert(handle, exit_tx);
        let msg = ToJail::Run {
            run: handle,
            argv,
            env,
            cwd,
        };
        let started = Instant::now();
        let started_at = SystemTime::now();
        let rt = tokio::runtime::Handle::current();
        let unregister = |e: IsolatedError| {
            lock(&session.waiters).remove(&handle);
            e
        };
        if background {
            let runs_dir = session.dir.join("runs");
            let log = runs_dir.join(format!("{run_id}.log"));
            let file = std::fs::create_dir_all(&runs_dir)
                .and_then(|()| OpenOptions::new().create(true).append(true).open(&log))
                .map_err(|e| unregister(IsolatedError::Jail(format!("cannot open run log: {e}"))))?;
            session.send(&msg, &[file.as_raw_fd()]).map_err(unregister)?;
            drop(file);
            let run = Arc::new(BackgroundRun {
                id: run_id.clone(),
                started_at,
                state: Mutex::new(RunState::Running),
                log,
            });
            lock(&session.runs).insert(run_id.clone(), Arc::clone(&run));
            session.busy.fetch_add(1, Ordering::SeqCst);
            session.touch();
            let owner = Arc::clone(&session);
            rt.spawn(async move {
                let session = owner;
                let end = exit_rx.await.unwrap_or(RunEnd::SessionGone);
                let log = run.log.clone();
                let _ = tokio::task::spawn_blocking(move || cap_log(&log)).await;
                *lock(&run.state) = RunState::Finished {
                    end,
                    at: SystemTime::now(),
                };
                *lock(&session.last_run_at) = Some(SystemTime::now());
                session.busy.fetch_sub(1, Ordering::SeqCst);
                session.touch();
            });
            return Ok(Started::Background(IsolatedBackgroundRunResponse {
                session_id: session.id.clone(),
                run_id,
                started_at: rfc3339(started_at),
            }));
        }
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| unregister(IsolatedError::Jail(format!("pipe: {e}"))))?;
        let journal = Journal::new(self.runtime.journal_path(&run_id));
        journal.push(&StreamEvent::init(&run_id, now_ms()));
        session.send(&msg, &[write.as_raw_fd()]).map_err(unregister)?;
        drop(write);
        session.busy.fetch_add(1, Ordering::SeqCst);
        session.touch();
        let pump = PumpThread::start(
            format!("iso-pump-{}", &run_id[..8]),
            vec![Source {
                fd: read,
                kind: OutputKind::Stdout,
            }],
            Arc::clone(&journal),
        );
        let supervised = Arc::clone(&journal);
        rt.spawn(supervise(
            session, handle, exit_rx, pump, timeout, started, supervised,
        ));
        Ok(Started::Foreground(journal))
    }

    /// SIGINT to every process of session `sid` (a foreground run's client went away).
    pub fn interrupt(&self, sid: &str) {
        if let Some(session) = self.map().get(sid).cloned() {
            let _ = session.send(&ToJail::Interrupt, &[]);
        }
    }

    /// `GET …/runs/{rid}`.
    pub fn run_status(&self, sid: &str, rid: &str) -> Result<IsolatedRunStatus, IsolatedError> {
        let session = self.get(sid)?;
        let run = lock(&session.runs)
            .get(rid)
            .cloned()
            .ok_or_else(|| IsolatedError::RunNotFound(rid.to_owned()))?;
        let mut status = IsolatedRunStatus {
            session_id: session.id.clone(),
            run_id: run.id.clone(),
            running: true,
            started_at: rfc3339(run.started_at),
            exit_code: None,
            error: None,
            finished_at: None,
        };
        if let RunState::Finished { end, at } = &*lock(&run.state) {
            status.running = false;
            status.finished_at = Some(rfc3339(*at));
            match end {
                RunEnd::Exited(s) => {
                    status.exit_code = Some(s.shell_code());
                    status.error = (!s.success()).then(|| s.describe());
                }
                RunEnd::Failed(e) => {
                    status.exit_code = Some(127);
                    status.error = Some(e.clone());
                }
                RunEnd::SessionGone => status.error = Some("session terminated".into()),
            }
        }
        Ok(status)
    }

    /// The log file of a background run.
    pub fn run_log(&self, sid: &str, rid: &str) -> Result<PathBuf, IsolatedError> {
        let session = self.get(sid)?;
        let run = lock(&session.runs)
            .get(rid)
            .cloned()
            .ok_or_else(|| IsolatedError::RunNotFound(rid.to_owned()))?;
        Ok(run.log.clone())
    }

    /// Deletes a session: kills its processes, waits for the jail, frees its directories.
    pub async fn delete(&self, sid: &str) -> Result<(), IsolatedError> {
        self.require_available()?;
        let session = self
            .map()
            .remove(sid)
            .ok_or_else(|| IsolatedError::NotFound(sid.to_owned()))?;
        destroy(&session).await;
        Ok(())
    }

    async fn collect_idle(&self) {
        let idle: Vec<Arc<Session>> = {
            let map = self.map();
            map.values()
                .filter(|s| s.idle_remaining() == Some(0) && s.busy.load(Ordering::SeqCst) == 0)
                .cloned()
                .collect()
        };
        for s in idle {
            if self.map().remove(&s.id).is_some() {
                tracing::info!(session = %s.id, "isolated session collected after idle timeout");
                destroy(&s).await;
            }
        }
    }

    /// Kills every session's processes and, once they are gone, removes their cgroups and
    /// directories (shutdown; sessions do not survive a restart).
    pub fn kill_all(&self) {
        let sessions: Vec<Arc<Session>> = self.map().drain().map(|(_, s)| s).collect();
        for s in &sessions {
            *lock(&s.status) = IsolatedSessionStatus::Destroyed;
            kill_session(s);
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        for s in &sessions {
            if let Some(cg) = &s.cgroup {
                while Instant::now() < deadline {
                    cg.kill_all();
                    cg.remove();
                    if cg.procs_files().iter().all(|p| !p.exists()) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
            let _ = std::fs::remove_dir_all(&s.dir);
        }
    }
}

/// SIGKILL to every pid listed in these `cgroup.procs` files.
fn kill_procs(files: &[PathBuf]) {
    for file in files {
        if let Ok(text) = std::fs::read_to_string(file) {
            for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                if pid > 1 {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

fn kill_session(session: &Session) {
    // Closing our end makes the init exit (and, in full mode, the kernel end its namespace).
    if let Some(fd) = lock(&session.ctl).take() {
        let _ = nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Both);
    }
    process::signal_group(session.jail_pid, nix::sys::signal::Signal::SIGKILL);
    for &pid in lock(&session.run_pids).iter() {
        process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
    }
    if let Some(cg) = &session.cgroup {
        cg.kill_all();
    }
}

async fn destroy(session: &Arc<Session>) {
    *lock(&session.status) = IsolatedSessionStatus::Destroyed;
    kill_session(session);
    if let Some(exit) = session.jail_exit.lock().await.take() {
        let _ = tokio::time::timeout(Duration::from_secs(5), exit).await;
    }
    let session = Arc::clone(session);
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(cg) = &session.cgroup {
            // The cgroup empties once the kernel has torn the namespace down.
            for _ in 0..100 {
                cg.kill_all();
                cg.remove();
                if cg.procs_files().iter().all(|p| !p.exists()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = std::fs::remove_dir_all(&session.dir);
    })
    .await;
}

/// Reads the jail's messages until its socket closes, routing exits to their waiters.
fn read_jail(session: std::sync::Weak<Session>, fd: OwnedFd) {
    let mut buf = Vec::new();
    loop {
        let msg = proto::recv::<FromJail>(fd.as_fd(), &mut buf);
        let Some(session) = session.upgrade() else {
            return;
        };
        let (run, end) = match msg {
            Ok((FromJail::Exited { run, code, signal }, _)) => {
                let status = match (code, signal) {
                    (Some(c), _) => ExitStatus::Code(c),
                    (None, Some(s)) => ExitStatus::Signal(s),
                    (None, None) => ExitStatus::Code(-1),
                };
                (run, RunEnd::Exited(status))
            }
            Ok((FromJail::RunFailed { run, error }, _)) => (run, RunEnd::Failed(error)),
            Ok((FromJail::Started { pid, .. }, _)) => {
                if session.degraded {
                    lock(&session.run_pids).push(pid);
                }
                continue;
            }
            Ok(_) | Err(proto::ProtoError::Malformed(_)) => continue,
            Err(_) => {
                // The jail is gone: every pending run ends with it.
                {
                    let mut status = lock(&session.status);
                    if *status == IsolatedSessionStatus::Active {
                        *status = IsolatedSessionStatus::Dead;
                    }
                }
                for (_, tx) in lock(&session.waiters).drain() {
                    let _ = tx.send(RunEnd::SessionGone);
                }
                return;
            }
        };
        let waiter = lock(&session.waiters).remove(&run);
        if let Some(tx) = waiter {
            let _ = tx.send(end);
        }
    }
}

/// Keeps the first 16 MiB of a finished run's log.
fn cap_log(path: &Path) {
    if let Ok(file) = OpenOptions::new().write(true).open(path) {
        if file.metadata().map(|m| m.len() > LOG_CAP).unwrap_or(false) {
            let _ = file.set_len(LOG_CAP);
        }
    }
}

/// Owns a foreground run until it ends: timeout (SIGINT to the session, SIGKILL of the run's
/// group after a grace), output drain, terminal event.
async fn supervise(
    session: Arc<Session>,
    handle: u64,
    exit: oneshot::Receiver<RunEnd>,
    pump: PumpThread,
    timeout: Option<Duration>,
    started: Instant,
    journal: Arc<Journal>,
) {
    let escalate = {
        let session = Arc::clone(&session);
        async move {
            send_blocking(&session, ToJail::Interrupt).await;
            tokio::time::sleep(INTERRUPT_GRACE).await;
            send_blocking(&session, ToJail::Kill { run: handle }).await;
        }
    };
    let (end, timed_out) = process::wait_exit(exit, timeout, escalate).await;
    let end = end.unwrap_or(RunEnd::SessionGone);
    pump.drain().await;
    *lock(&session.last_run_at) = Some(SystemTime::now());
    session.busy.fetch_sub(1, Ordering::SeqCst);
    session.touch();
    let elapsed = started.elapsed().as_millis() as u64;
    let terminal = match end {
        RunEnd::Exited(status) => {
            let note =
                timed_out.then(|| format!("interrupted after {} s", timeout.unwrap_or_default().as_secs()));
            exit_event(status, status.shell_code(), elapsed, note)
        }
        RunEnd::Failed(e) => StreamEvent::error("CommandExecError", "127".into(), vec![e], now_ms()),
        RunEnd::SessionGone => StreamEvent::error(
            "CommandExecError",
            "-1".into(),
            vec!["session terminated".into()],
            now_ms(),
        ),
    };
    journal.finish(&terminal);
}

/// Sends `msg` to the jail from the blocking pool (the socket send may block). Best effort:
/// a session that is gone needs no message.
async fn send_blocking(session: &Arc<Session>, msg: ToJail) {
    let session = Arc::clone(session);
    let _ = tokio::task::spawn_blocking(move || session.send(&msg, &[])).await;
}

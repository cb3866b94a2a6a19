//! Process management: spawning into a fresh process group, one reaper for every child, group
//! signals, and exit status with resource usage.
//!
//! execd is a child subreaper (and may be PID 1), so orphans of anything it starts are
//! re-parented to it. One [`Reaper`] task calls `wait4(-1)` on every SIGCHLD and hands each
//! status to whoever registered that pid; everything else is simply reaped. Invariant: nothing
//! else in execd may wait for children (no `tokio::process`, no `Command::output`), or the
//! reaper and it would steal each other's statuses.
//!
//! Spawning is synchronous (fork/exec is quick); waiting is async.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

use crate::wire::Usage;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal number.
    Signal(i32),
}

impl ExitStatus {
    /// The contract's exit code: the code, or -1 for a signal.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(_) => -1,
        }
    }

    /// Shell convention for a PID 1 exiting on behalf of its child: the code, or 128 + signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }

    /// Whether the process exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }

    /// Go's wording, which clients of upstream see: `exit status 2`, `signal: killed`.
    pub fn describe(self) -> String {
        match self {
            ExitStatus::Code(c) => format!("exit status {c}"),
            ExitStatus::Signal(s) => format!("signal: {}", signal_name(s)),
        }
    }
}

fn signal_name(sig: i32) -> String {
    match Signal::try_from(sig) {
        Ok(Signal::SIGKILL) => "killed".into(),
        Ok(Signal::SIGTERM) => "terminated".into(),
        Ok(Signal::SIGINT) => "interrupt".into(),
        Ok(Signal::SIGHUP) => "hangup".into(),
        Ok(Signal::SIGQUIT) => "quit".into(),
        Ok(Signal::SIGSEGV) => "segmentation fault".into(),
        Ok(Signal::SIGABRT) => "aborted".into(),
        Ok(Signal::SIGPIPE) => "broken pipe".into(),
        Ok(s) => s.as_str().to_lowercase(),
        Err(_) => format!("signal {sig}"),
    }
}

/// Exit status and resource usage of a reaped process.
#[derive(Debug, Clone, Copy)]
pub struct Exit {
    /// How it ended.
    pub status: ExitStatus,
    /// CPU and memory it (and the children it waited for) used.
    pub usage: Usage,
}

/// Reaps every child of execd and routes statuses to registered waiters.
#[derive(Default)]
pub struct Reaper {
    /// Waiters by pid. Held while spawning so the reaper cannot reap a new child before its
    /// waiter is registered (the reaper takes the same lock to dispatch).
    waiters: Mutex<HashMap<i32, oneshot::Sender<Exit>>>,
}

/// A spawned process: its pid (= process group id) and pipe ends.
pub struct Child {
    /// Pid, also the process group id.
    pub pid: i32,
    /// Write end of the child's stdin, when piped.
    pub stdin: Option<OwnedFd>,
    /// Read end of the child's stdout, when piped.
    pub stdout: Option<OwnedFd>,
    /// Read end of the child's stderr, when piped separately.
    pub stderr: Option<OwnedFd>,
    /// Resolves when the reaper has reaped the process.
    pub exit: oneshot::Receiver<Exit>,
}

/// Where a child's stdin comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// `/dev/null`.
    Null,
    /// A new pipe returned in [`Child`].
    Pipe,
    /// execd's own stdin (init mode).
    Inherit,
}

/// Where a child's output goes.
pub enum Output {
    /// execd's own stdout/stderr (init mode).
    Inherit,
    /// A new pipe returned in [`Child`].
    Pipe,
    /// An open file (e.g. a background command's log, shared by stdout and stderr).
    File(File),
    /// Nowhere.
    Null,
}

/// The user and groups a child runs as.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Real and effective uid.
    pub uid: u32,
    /// Real and effective gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// Everything needed to start a process; built before fork.
pub struct SpawnSpec {
    /// Program path (already resolved) and arguments, `args[0]` included.
    pub program: PathBuf,
    /// Full argument vector including argv[0].
    pub args: Vec<OsString>,
    /// The complete environment (execd's own is not inherited).
    pub env: Vec<(OsString, OsString)>,
    /// Working directory.
    pub cwd: Option<PathBuf>,
    /// Where stdin comes from.
    pub stdin: Input,
    /// Where stdout goes.
    pub stdout: Output,
    /// Where stderr goes; `None` means the same place as stdout.
    pub stderr: Option<Output>,
    /// Switch to this identity before exec.
    pub identity: Option<Identity>,
    /// Extra fd to place at fd 3 in the child (session control pipe).
    pub fd3: Option<OwnedFd>,
    /// A pseudo-terminal slave. When set, the child starts a new session (its process group id
    /// is still its pid) with this terminal as its controlling terminal and as its stdin,
    /// stdout and stderr, which override `stdin`, `stdout` and `stderr`.
    pub terminal: Option<OwnedFd>,
}

impl SpawnSpec {
    /// A spec running `program` with `args` (argv[0] included) and nothing else set.
    pub fn new(program: PathBuf, args: Vec<OsString>) -> Self {
        Self {
            program,
            args,
            env: Vec::new(),
            cwd: None,
            stdin: Input::Null,
            stdout: Output::Null,
            stderr: None,
            identity: None,
            fd3: None,
            terminal: None,
        }
    }
}

/// Why a spawn failed.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// Creating a pipe failed.
    #[error("cannot create pipe: {0}")]
    Pipe(#[source] io::Error),
    /// fork/exec failed (program missing, permission, bad cwd…).
    #[error("cannot start {program}: {source}")]
    Exec {
        /// What was being started.
        program: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

impl Reaper {
    /// Creates the reaper and starts its task. Must run inside the runtime before anything is
    /// spawned, so no SIGCHLD is missed.
    pub fn start() -> io::Result<Arc<Self>> {
        let reaper = Arc::new(Self::default());
        let mut sigchld = signal(SignalKind::child())?;
        let task = Arc::clone(&reaper);
        tokio::spawn(async move {
            loop {
                task.reap_all();
                // Signals coalesce; a periodic sweep also catches any that raced the handler.
                let _ = tokio::time::timeout(Duration::from_secs(1), sigchld.recv()).await;
            }
        });
        Ok(reaper)
    }

    fn reap_all(&self) {
        loop {
            // Taken before wait4, not just to dispatch: `spawn` holds it while std forks, and
            // when exec fails std waits for that child itself (and panics if it was reaped
            // first). Spawning takes milliseconds, so the reaper waits at most that long.
            let mut waiters = self.waiters();
            let mut status: libc::c_int = 0;
            // SAFETY: an all-zero `rusage` is a valid value of this plain C struct.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: wait4 only writes to the two out-pointers, which point to live locals.
            let pid = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut usage) };
            if pid <= 0 {
                return; // 0: children remain but none exited; -1: ECHILD (none at all).
            }
            let exit_status = if libc::WIFEXITED(status) {
                ExitStatus::Code(libc::WEXITSTATUS(status))
            } else if libc::WIFSIGNALED(status) {
                ExitStatus::Signal(libc::WTERMSIG(status))
            } else {
                continue; // stopped/continued: not an exit
            };
            let exit = Exit {
                status: exit_status,
                usage: Usage {
                    cpu_user_ms: timeval_ms(usage.ru_utime),
                    cpu_system_ms: timeval_ms(usage.ru_stime),
                    max_rss_kib: usage.ru_maxrss.max(0) as u64,
                },
            };
            let waiter = waiters.remove(&pid);
            drop(waiters);
            match waiter {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => tracing::debug!(pid, status = ?exit.status, "reaped orphan"),
            }
        }
    }

    fn waiters(&self) -> std::sync::MutexGuard<'_, HashMap<i32, oneshot::Sender<Exit>>> {
        // The map stays consistent under panic (single insert/remove calls).
        self.waiters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a process in a new process group and registers it for reaping.
    pub fn spawn(&self, spec: SpawnSpec) -> Result<Child, SpawnError> {
        let mut cmd = Command::new(&spec.program);
        if let Some((first, rest)) = spec.args.split_first() {
            cmd.arg0(first);
            cmd.args(rest);
        }
        cmd.env_clear().envs(spec.env.iter().map(|(k, v)| (k, v)));
        if let Some(cwd) = &spec.cwd {
            cmd.current_dir(cwd);
        }
        let new_session = spec.terminal.is_some();
        if !new_session {
            // With a terminal, setsid in pre_exec makes the child a group leader instead (it
            // would fail after setpgid).
            cmd.process_group(0);
        }
        cmd.stdin(match spec.stdin {
            Input::Null => Stdio::null(),
            Input::Pipe => Stdio::piped(),
            Input::Inherit => Stdio::inherit(),
        });
        let mut merged_pipe: Option<OwnedFd> = None;
        match (spec.stdout, spec.stderr) {
            (Output::Pipe, None) => {
                // One pipe for both: stderr merged into stdout in write order.
                let (r, w) = std::io::pipe().map_err(SpawnError::Pipe)?;
                let w2 = w.try_clone().map_err(SpawnError::Pipe)?;
                cmd.stdout(w).stderr(w2);
                merged_pipe = Some(r.into());
            }
            (Output::File(f), None) => {
                let f2 = f.try_clone().map_err(SpawnError::Pipe)?;
                cmd.stdout(f).stderr(f2);
            }
            (Output::Null, None) => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
            (Output::Inherit, None) => {
                cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
            }
            (out, Some(err)) => {
                cmd.stdout(to_stdio(out));
                cmd.stderr(to_stdio(err));
            }
        }
        if let Some(tty) = spec.terminal {
            let dup = |fd: &OwnedFd| fd.try_clone().map_err(SpawnError::Pipe);
            cmd.stdin(dup(&tty)?).stdout(dup(&tty)?).stderr(tty);
        }
        let identity = spec.identity.clone();
        let fd3 = spec.fd3;
        if identity.is_some() || fd3.is_some() || new_session {
            use std::os::fd::AsRawFd;
            let fd3_raw = fd3.as_ref().map(|f| f.as_raw_fd());
            // SAFETY: the closure runs in the child between fork and exec and only makes
            // async-signal-safe system calls (setsid, ioctl, dup2, fcntl, setgroups, setgid,
            // setuid) on values computed before the fork; it allocates nothing and takes no locks.
            unsafe {
                cmd.pre_exec(move || {
                    if new_session {
                        // A new session has no controlling terminal; fd 0 (the slave, already
                        // in place) becomes it, so ^C, job control and SIGWINCH work.
                        if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    if let Some(fd) = fd3_raw {
                        if fd == 3 {
                            let flags = libc::fcntl(3, libc::F_GETFD);
                            if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                                return Err(io::Error::last_os_error());
                            }
                        } else if libc::dup2(fd, 3) < 0 {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    if let Some(id) = &identity {
                        if libc::setgroups(id.groups.len(), id.groups.as_ptr()) != 0
                            || libc::setgid(id.gid) != 0
                            || libc::setuid(id.uid) != 0
                        {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    Ok(())
                });
            }
        }
        let mut waiters = self.waiters();
        let mut child = cmd.spawn().map_err(|source| SpawnError::Exec {
            program: spec.program.display().to_string(),
            source,
        })?;
        let pid = child.id() as i32;
        let (tx, rx) = oneshot::channel();
        waiters.insert(pid, tx);
        drop(waiters);
        drop(fd3);
        Ok(Child {
            pid,
            stdin: child.stdin.take().map(OwnedFd::from),
            stdout: merged_pipe.or_else(|| child.stdout.take().map(OwnedFd::from)),
            stderr: child.stderr.take().map(OwnedFd::from),
            exit: rx,
        })
    }
}

fn to_stdio(out: Output) -> Stdio {
    match out {
        Output::Pipe => Stdio::piped(),
        Output::File(f) => Stdio::from(f),
        Output::Null => Stdio::null(),
        Output::Inherit => Stdio::inherit(),
    }
}

fn timeval_ms(tv: libc::timeval) -> u64 {
    (tv.tv_sec.max(0) as u64) * 1000 + (tv.tv_usec.max(0) as u64) / 1000
}

/// Sends `sig` to the whole process group `pgid`. A group that is already gone is not an error.
pub fn signal_group(pgid: i32, sig: Signal) {
    if pgid <= 1 {
        return; // never signal our own group or init's by accident
    }
    let _ = killpg(Pid::from_raw(pgid), sig);
}

/// Whether any process of group `pgid` is still alive.
pub fn group_alive(pgid: i32) -> bool {
    pgid > 1 && killpg(Pid::from_raw(pgid), None).is_ok()
}

/// SIGTERM to the group, then SIGKILL if anything is left after `grace`.
pub async fn terminate_group(pgid: i32, grace: Duration) {
    signal_group(pgid, Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if !group_alive(pgid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal_group(pgid, Signal::SIGKILL);
}

/// Waits for a process's `exit` report. If `timeout` passes first, runs `escalate` (which must
/// make the process end, e.g. by killing its group) while still waiting; the exit may arrive
/// before `escalate` completes, which then stops where it is. Returns the report (`None` if
/// its sender went away) and whether the timeout fired. Shared by every supervisor.
pub async fn wait_exit<T>(
    mut exit: oneshot::Receiver<T>,
    timeout: Option<Duration>,
    escalate: impl std::future::Future<Output = ()>,
) -> (Option<T>, bool) {
    let Some(limit) = timeout else {
        return (exit.await.ok(), false);
    };
    tokio::select! {
        e = &mut exit => return (e.ok(), false),
        () = tokio::time::sleep(limit) => {}
    }
    let exited = tokio::select! {
        e = &mut exit => e,
        () = escalate => exit.await,
    };
    (exited.ok(), true)
}

/// Marks execd as a child subreaper so orphans of its commands are re-parented to it.
pub fn become_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot become child subreaper; orphans will go to init");
    }
}

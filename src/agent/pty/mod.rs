//! Interactive terminal sessions: a shell (or one command) on a pseudo-terminal or on plain
//! pipes, whose output is kept in a 1 MiB replay ring so that clients can come and go without
//! losing or repeating a byte.
//!
//! A session is created idle; the first holding connection starts its process. One connection
//! at a time *holds* a session (may write stdin, resize and signal); any number may *observe*
//! it (read only). Every connection reads the ring through its own offset, so attaching is
//! just "snapshot the ring from `since`, then follow from its end", done under the session
//! lock: nothing written in between can be lost or doubled.
//!
//! Per running session there is one named reader thread (blocking poll/read on the terminal
//! master or the pipes, appending to the ring) and one supervisor task (waits for the reaper's
//! exit status, lets the reader drain, then records the exit). Both end when the process
//! exits; `DELETE` kills the process, which ends them. Input is written asynchronously on a
//! non-blocking fd, so a process that stops reading never blocks a runtime worker.
//!
//! Knows nothing about HTTP or WebSocket framing; that is `http/pty.rs`.

pub mod ring;
pub mod terminal;

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{oneshot, watch};

use super::output::{read_some, set_nonblocking, ReadOutcome};
use super::process::{self, Exit, Input as StdinSource, Output, SpawnError, SpawnSpec};
use super::{env, Runtime};
use crate::wire::pty::{CreatePtyRequest, PtyMode, PtyStatusResponse};
use ring::{Chunk, Ring, Stream};
pub use terminal::Size;

/// How many output bytes a session keeps for replay.
pub const RING_BYTES: usize = 1 << 20;
/// Largest piece of output handed out at once (one WebSocket frame).
pub const CHUNK_BYTES: usize = 32 << 10;

/// Why a terminal request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    /// No session with that id.
    #[error("pty session not found: {0}")]
    NotFound(String),
    /// Another connection holds the session.
    #[error("pty session {0} already has a connected client")]
    AlreadyConnected(String),
    /// The cwd could not be expanded.
    #[error("invalid cwd {cwd:?}: {source}")]
    Cwd {
        /// The cwd as given.
        cwd: String,
        /// Why it cannot be expanded.
        #[source]
        source: env::ExpandError,
    },
    /// The cwd could not be created, or is not a directory.
    #[error("cannot use cwd {}: {source}", path.display())]
    CreateCwd {
        /// The expanded path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A terminal dimension of zero.
    #[error("cols and rows must be at least 1")]
    Size,
    /// The process could not be started.
    #[error("cannot start the pty process: {0}")]
    Start(#[from] StartError),
    /// The process has not started or has exited.
    #[error("the process is not running")]
    NotRunning,
    /// An observer tried to change the session.
    #[error("observers may not write, resize or signal")]
    ReadOnly,
    /// Writing to the process's stdin failed.
    #[error("cannot write to stdin: {0}")]
    StdinWrite(#[source] io::Error),
    /// Resize of a pipe-mode session.
    #[error("resize needs pty mode")]
    NotATerminal,
    /// The resize ioctl failed.
    #[error("cannot resize: {0}")]
    Resize(#[source] io::Error),
    /// A signal name that is not a signal.
    #[error("unknown signal {0:?}")]
    UnknownSignal(String),
}

/// Why starting a session's process failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Opening the pseudo-terminal failed.
    #[error("cannot open a pseudo-terminal: {0}")]
    OpenPty(#[source] io::Error),
    /// Creating the reader's stop pipe or duplicating an fd failed.
    #[error("cannot set up the process's fds: {0}")]
    Fds(#[source] io::Error),
    /// fork/exec failed.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    /// The reader thread could not be started.
    #[error("cannot start the reader thread: {0}")]
    Thread(#[source] io::Error),
}

/// What a connection may do with a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The one client that may write, resize and signal. With `takeover`, an existing holder
    /// is evicted instead of refusing this one.
    Holder {
        /// Evict the current holder.
        takeover: bool,
    },
    /// Read-only: sees output, cannot change anything.
    Observer,
}

/// Something a connection should forward to its client.
#[derive(Debug)]
pub enum PtyEvent {
    /// The next output bytes, following on from the previous ones.
    Output(Chunk),
    /// Output after a gap: the connection fell more than the ring behind, and resumes at
    /// `chunk.start`.
    Resumed(Chunk),
    /// The process exited with this code (-1 for a signal); all its output came before.
    Exited(i32),
    /// Another connection took the session over (holders only).
    TakenOver,
    /// The session was deleted before its process ever started.
    Deleted,
}

/// All terminal sessions of this execd.
pub struct Ptys {
    runtime: Arc<Runtime>,
    /// Sessions by id; lookups and inserts only, never held across anything slow.
    map: Mutex<HashMap<String, Arc<PtySession>>>,
    /// Source of connection ids.
    next_conn: AtomicU64,
}

/// One terminal session.
struct PtySession {
    id: String,
    cwd: PathBuf,
    command: Option<String>,
    size: Size,
    runtime: Arc<Runtime>,
    /// Ring, lifecycle and holder. A std mutex: held for short, non-async sections only (the
    /// reader thread takes it per chunk).
    state: Mutex<State>,
    /// Bumped after every change a connection may care about (output, exit, takeover,
    /// deletion); connections wait on it, then look at `state`.
    changed: watch::Sender<u64>,
}

struct State {
    ring: Ring,
    life: Life,
    /// The connection that holds the session (reserved before its WebSocket upgrade).
    holder: Option<u64>,
    deleted: bool,
}

enum Life {
    Idle,
    Running(Arc<Process>),
    Exited { code: i32, mode: PtyMode },
}

/// A running process and the ends execd keeps of it.
struct Process {
    pid: i32,
    mode: PtyMode,
    /// The terminal master (PTY mode), for resize and the foreground process group.
    master: Option<OwnedFd>,
    /// Where stdin goes: the terminal master or the stdin pipe.
    input: Input,
}

/// A non-blocking writer; writes from concurrent frames are serialized, never interleaved.
struct Input {
    fd: AsyncFd<OwnedFd>,
    turn: tokio::sync::Mutex<()>,
}

impl Input {
    fn new(fd: OwnedFd) -> io::Result<Self> {
        set_nonblocking(&fd)?;
        // SAFETY: the `OwnedFd` is open, is owned by the `AsyncFd` from here on (nobody else
        // can close or replace it), and its `as_raw_fd` always returns the same descriptor.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::WRITABLE)? };
        Ok(Self {
            fd,
            turn: tokio::sync::Mutex::new(()),
        })
    }

    async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        let _turn = self.turn.lock().await;
        while !data.is_empty() {
            let mut ready = self.fd.writable().await?;
            match ready.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
        Ok(())
    }
}

impl Ptys {
    /// An empty registry.
    pub fn new(runtime: Arc<Runtime>) -> Arc<Self> {
        Arc::new(Self {
            runtime,
            map: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
        })
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<PtySession>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, id: &str) -> Result<Arc<PtySession>, PtyError> {
        self.map()
            .get(id)
            .cloned()
            .ok_or_else(|| PtyError::NotFound(id.to_owned()))
    }

    /// Creates an idle session; its process starts with the first holding connection. Creates
    /// a missing cwd. Blocking (file system).
    pub fn create(&self, req: CreatePtyRequest) -> Result<String, PtyError> {
        let size = Size {
            cols: req.cols.unwrap_or(Size::default().cols),
            rows: req.rows.unwrap_or(Size::default().rows),
        };
        if size.cols == 0 || size.rows == 0 {
            return Err(PtyError::Size);
        }
        let cwd = match req.cwd.as_deref().filter(|c| !c.is_empty()) {
            None => self.runtime.cwd.clone(),
            Some(raw) => {
                let vars = self.runtime.child_env(&Default::default());
                let expanded =
                    env::expand_path(raw, |k| vars.get(k).cloned()).map_err(|source| PtyError::Cwd {
                        cwd: raw.to_owned(),
                        source,
                    })?;
                let path = self.runtime.cwd.join(expanded);
                std::fs::create_dir_all(&path).map_err(|source| PtyError::CreateCwd {
                    path: path.clone(),
                    source,
                })?;
                path
            }
        };
        let id = uuid::Uuid::new_v4().to_string();
        let session = Arc::new(PtySession {
            id: id.clone(),
            cwd,
            command: req.command.filter(|c| !c.trim().is_empty()),
            size,
            runtime: Arc::clone(&self.runtime),
            state: Mutex::new(State {
                ring: Ring::new(RING_BYTES),
                life: Life::Idle,
                holder: None,
                deleted: false,
            }),
            changed: watch::Sender::new(0),
        });
        self.map().insert(id.clone(), session);
        Ok(id)
    }

    /// Whether the session's process runs, and how much it has written.
    pub fn status(&self, id: &str) -> Result<PtyStatusResponse, PtyError> {
        let session = self.get(id)?;
        let st = session.lock();
        Ok(PtyStatusResponse {
            session_id: session.id.clone(),
            running: matches!(st.life, Life::Running(_)),
            output_offset: st.ring.total(),
        })
    }

    /// Deletes a session and kills every process of it; connections see the exit. Blocking
    /// (scans `/proc` for the terminal's background jobs).
    pub fn delete(&self, id: &str) -> Result<(), PtyError> {
        let session = self
            .map()
            .remove(id)
            .ok_or_else(|| PtyError::NotFound(id.to_owned()))?;
        session.kill();
        Ok(())
    }

    /// Kills every session's processes (shutdown).
    pub fn kill_all(&self) {
        let sessions: Vec<_> = self.map().values().cloned().collect();
        for session in sessions {
            session.kill();
        }
    }

    /// Reserves a place on a session before the WebSocket upgrade, so that a refusal (unknown
    /// session, already held) is a plain HTTP answer. Dropping the claim unused releases it.
    pub fn claim(&self, id: &str, role: Role) -> Result<Claim, PtyError> {
        let session = self.get(id)?;
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut reserved = false;
        {
            let mut st = session.lock();
            if st.deleted {
                return Err(PtyError::NotFound(id.to_owned()));
            }
            if role == (Role::Holder { takeover: false }) {
                if st.holder.is_some() {
                    return Err(PtyError::AlreadyConnected(id.to_owned()));
                }
                st.holder = Some(conn);
                reserved = true;
            }
        }
        Ok(Claim {
            session,
            conn,
            role,
            reserved,
        })
    }
}

impl PtySession {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// Appends output to the ring and wakes the connections.
    fn push(&self, stream: Stream, data: &[u8]) {
        self.lock().ring.push(stream, data);
        self.notify();
    }

    fn kill(&self) {
        let process = {
            let mut st = self.lock();
            st.deleted = true;
            match &st.life {
                Life::Running(p) => Some(Arc::clone(p)),
                Life::Idle | Life::Exited { .. } => None,
            }
        };
        self.notify();
        if let Some(p) = process {
            match p.mode {
                PtyMode::Pty => terminal::kill_session(Path::new("/proc"), p.pid),
                PtyMode::Pipe => process::signal_group(p.pid, Signal::SIGKILL),
            }
        }
    }

    /// Starts the process. Called with the state locked, so that exactly one connection
    /// starts it.
    fn start(self: &Arc<Self>, st: &mut State, mode: PtyMode) -> Result<(), StartError> {
        let mut vars = self.runtime.child_env(&Default::default());
        if mode == PtyMode::Pty {
            // TUIs need a terminal type; execd itself usually runs without one.
            vars.entry("TERM".into())
                .or_insert_with(|| "xterm-256color".into());
        }
        let (program, name) = self.runtime.shell(&vars);
        let mut args: Vec<OsString> = vec![name.into()];
        if name == "bash" {
            args.extend(["--norc".into(), "--noprofile".into()]);
        }
        if let Some(command) = &self.command {
            args.extend(["-c".into(), command.into()]);
        }
        let mut spec = SpawnSpec::new(program, args);
        spec.env = vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        spec.cwd = Some(self.cwd.clone());

        let dup = |fd: &OwnedFd| fd.try_clone().map_err(StartError::Fds);
        let (child, master, sources, input) = match mode {
            PtyMode::Pty => {
                let pair = terminal::open(self.size).map_err(StartError::OpenPty)?;
                spec.terminal = Some(pair.slave);
                let child = self.runtime.reaper.spawn(spec)?;
                let sources = vec![(dup(&pair.master)?, Stream::Stdout)];
                let input = dup(&pair.master)?;
                (child, Some(pair.master), sources, input)
            }
            PtyMode::Pipe => {
                spec.stdin = StdinSource::Pipe;
                spec.stdout = Output::Pipe;
                spec.stderr = Some(Output::Pipe);
                let mut child = self.runtime.reaper.spawn(spec)?;
                let (Some(out), Some(err), Some(input)) =
                    (child.stdout.take(), child.stderr.take(), child.stdin.take())
                else {
                    process::signal_group(child.pid, Signal::SIGKILL);
                    return Err(StartError::Fds(io::Error::other("missing pipe")));
                };
                (
                    child,
                    None,
                    vec![(out, Stream::Stdout), (err, Stream::Stderr)],
                    input,
                )
            }
        };
        let pid = child.pid;
        let started = (|| {
            let input = Input::new(input).map_err(StartError::Fds)?;
            let (stop_rx, stop_tx) = std::io::pipe().map_err(StartError::Fds)?;
            let (done_tx, done_rx) = oneshot::channel();
            let session = Arc::clone(self);
            std::thread::Builder::new()
                .name(format!("pty-{}", &self.id[..8.min(self.id.len())]))
                .spawn(move || {
                    read_output(&session, sources, stop_rx.into());
                    let _ = done_tx.send(());
                })
                .map_err(StartError::Thread)?;
            Ok((input, OwnedFd::from(stop_tx), done_rx))
        })();
        let (input, stop, done) = match started {
            Ok(parts) => parts,
            Err(e) => {
                // The reaper still reaps it; nobody waits for the status.
                process::signal_group(pid, Signal::SIGKILL);
                return Err(e);
            }
        };
        tokio::spawn(supervise(Arc::clone(self), child.exit, stop, done, mode));
        st.life = Life::Running(Arc::new(Process {
            pid,
            mode,
            master,
            input,
        }));
        tracing::debug!(session = %self.id, pid, ?mode, "pty process started");
        Ok(())
    }
}

/// Waits for the process to exit, lets the reader drain what it wrote, then records the exit
/// so that connections see it after the last byte. Owned by the process: ends with it.
async fn supervise(
    session: Arc<PtySession>,
    exit: oneshot::Receiver<Exit>,
    stop: OwnedFd,
    done: oneshot::Receiver<()>,
    mode: PtyMode,
) {
    let code = exit.await.map_or(-1, |e| e.status.code());
    drop(stop); // the reader drains what is buffered, then ends
    let _ = done.await;
    session.lock().life = Life::Exited { code, mode };
    session.notify();
    tracing::debug!(session = %session.id, code, "pty process exited");
}

/// The reader thread: polls the output fds and appends whatever arrives to the ring, until
/// every fd reports EOF, or `stop` hangs up (the process exited) and nothing more is buffered:
/// a background job that keeps the terminal open must not keep the session alive.
fn read_output(session: &PtySession, sources: Vec<(OwnedFd, Stream)>, stop: OwnedFd) {
    for (fd, _) in &sources {
        let _ = set_nonblocking(fd);
    }
    let mut open = vec![true; sources.len()];
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut stopping = false;
    while open.iter().any(|&o| o) {
        if !stopping {
            let mut fds: Vec<PollFd<'_>> = sources
                .iter()
                .zip(&open)
                .filter(|(_, &o)| o)
                .map(|((fd, _), _)| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
                .collect();
            fds.push(PollFd::new(stop.as_fd(), PollFlags::POLLIN));
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => break,
            }
            stopping = fds
                .last()
                .and_then(PollFd::revents)
                .is_some_and(|r| !r.is_empty());
        }
        let mut progressed = false;
        for (i, (fd, stream)) in sources.iter().enumerate() {
            if !open[i] {
                continue;
            }
            match read_some(fd, &mut buf) {
                ReadOutcome::Data(n) => {
                    progressed = true;
                    session.push(*stream, &buf[..n]);
                }
                // A terminal master reports EIO once no process has the slave open.
                ReadOutcome::Eof => open[i] = false,
                ReadOutcome::WouldBlock => {}
            }
        }
        if stopping && !progressed {
            break;
        }
    }
}

/// A place on a session reserved before the WebSocket upgrade.
pub struct Claim {
    session: Arc<PtySession>,
    conn: u64,
    role: Role,
    /// This claim holds the session's holder slot and must free it if never attached.
    reserved: bool,
}

impl Claim {
    /// Attaches after the upgrade: a holder takes the session (evicting the current holder on
    /// takeover) and starts its process in `mode` if it is idle; then, under the same lock,
    /// the ring is snapshot from `since` (default: everything retained) and the connection
    /// follows from its end. Blocking (may fork).
    pub fn attach(mut self, since: Option<u64>, mode: PtyMode) -> Result<Attachment, PtyError> {
        self.reserved = false; // from here on the attachment frees the slot
        let session = Arc::clone(&self.session);
        let holder = matches!(self.role, Role::Holder { .. });
        let mut attachment = Attachment {
            changed: session.changed.subscribe(),
            session: Arc::clone(&session),
            conn: self.conn,
            holder,
            cursor: 0,
            replay: None,
            mode,
        };
        let (result, kicked) = {
            let mut st = session.lock();
            let mut kicked = false;
            let result = if st.deleted {
                Err(PtyError::NotFound(session.id.clone()))
            } else {
                // A plain holder reserved its slot in `claim`; if a takeover came in between,
                // it stays evicted (its first event says so).
                if self.role == (Role::Holder { takeover: true }) && st.holder != Some(self.conn) {
                    kicked = st.holder.is_some();
                    st.holder = Some(self.conn);
                }
                let started = match st.life {
                    Life::Idle if st.holder == Some(self.conn) => {
                        session.start(&mut st, mode).map_err(PtyError::from)
                    }
                    _ => Ok(()),
                };
                attachment.mode = match &st.life {
                    Life::Running(p) => p.mode,
                    Life::Exited { mode, .. } => *mode,
                    Life::Idle => mode,
                };
                let (start, bytes) = st.ring.replay(since.unwrap_or(0));
                attachment.cursor = st.ring.total();
                attachment.replay = (!bytes.is_empty()).then_some((start, bytes));
                started
            };
            (result, kicked)
        };
        if kicked {
            session.notify();
        }
        // On error the attachment is dropped here, after the lock, and frees the slot.
        result.map(|()| attachment)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.reserved {
            release(&self.session, self.conn);
        }
    }
}

fn release(session: &PtySession, conn: u64) {
    let mut st = session.lock();
    if st.holder == Some(conn) {
        st.holder = None;
    }
}

/// A connection attached to a session: its replay and its read offset; [`Attachment::control`]
/// gives the holder's rights. Dropping it frees the holder slot.
pub struct Attachment {
    session: Arc<PtySession>,
    conn: u64,
    holder: bool,
    /// Offset of the next byte this connection will be sent.
    cursor: u64,
    changed: watch::Receiver<u64>,
    /// What was retained from `since` on at attach time: the offset of its first byte and the
    /// bytes. `None` when there was nothing.
    pub replay: Option<(u64, Vec<u8>)>,
    /// How the process runs (or will run).
    pub mode: PtyMode,
}

impl Attachment {
    /// The session id.
    pub fn session_id(&self) -> &str {
        &self.session.id
    }

    /// Waits for the next thing to forward. Cancel-safe: dropping the future loses nothing.
    pub async fn next(&mut self) -> PtyEvent {
        loop {
            // Mark the current version seen before looking, so any later change wakes us.
            self.changed.borrow_and_update();
            {
                let st = self.session.lock();
                if self.holder && st.holder != Some(self.conn) {
                    return PtyEvent::TakenOver;
                }
                if let Some(chunk) = st.ring.chunk(self.cursor, CHUNK_BYTES) {
                    let gap = chunk.start != self.cursor;
                    self.cursor = chunk.end();
                    return if gap {
                        PtyEvent::Resumed(chunk)
                    } else {
                        PtyEvent::Output(chunk)
                    };
                }
                match st.life {
                    Life::Exited { code, .. } => return PtyEvent::Exited(code),
                    Life::Idle if st.deleted => return PtyEvent::Deleted,
                    Life::Idle | Life::Running(_) => {}
                }
            }
            if self.changed.changed().await.is_err() {
                return PtyEvent::Deleted;
            }
        }
    }

    /// A handle to write, resize and signal (refused for observers), usable while this
    /// attachment reads.
    pub fn control(&self) -> Control {
        Control {
            session: Arc::clone(&self.session),
            conn: self.conn,
            holder: self.holder,
        }
    }
}

/// What a connection may change in a session: only a holder's control does anything.
pub struct Control {
    session: Arc<PtySession>,
    conn: u64,
    holder: bool,
}

impl Control {
    fn process(&self) -> Result<Arc<Process>, PtyError> {
        let st = self.session.lock();
        // A holder that was taken over is read-only until its connection closes.
        if !self.holder || st.holder != Some(self.conn) {
            return Err(PtyError::ReadOnly);
        }
        match &st.life {
            Life::Running(p) => Ok(Arc::clone(p)),
            Life::Idle | Life::Exited { .. } => Err(PtyError::NotRunning),
        }
    }

    /// Writes bytes to the process's stdin (through the terminal in PTY mode, so `\x03` is
    /// ^C). Waits while the process does not read; never blocks a thread.
    pub async fn write(&self, data: &[u8]) -> Result<(), PtyError> {
        let process = self.process()?;
        process.input.write_all(data).await.map_err(PtyError::StdinWrite)
    }

    /// Resizes the terminal.
    pub fn resize(&self, size: Size) -> Result<(), PtyError> {
        if size.cols == 0 || size.rows == 0 {
            return Err(PtyError::Size);
        }
        let process = self.process()?;
        let master = process.master.as_ref().ok_or(PtyError::NotATerminal)?;
        terminal::set_size(master, size).map_err(PtyError::Resize)
    }

    /// Sends a signal named like `SIGINT` or `INT`: in PTY mode to the terminal's foreground
    /// process group (what the keyboard would hit), in pipe mode to the shell's group.
    pub fn signal(&self, name: &str) -> Result<(), PtyError> {
        let signal = parse_signal(name)?;
        let process = self.process()?;
        let group = process
            .master
            .as_ref()
            .and_then(terminal::foreground_group)
            .unwrap_or(process.pid);
        process::signal_group(group, signal);
        Ok(())
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if self.holder {
            release(&self.session, self.conn);
        }
    }
}

/// `SIGINT`, `sigint` or `INT` → SIGINT.
pub fn parse_signal(name: &str) -> Result<Signal, PtyError> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&full).map_err(|_| PtyError::UnknownSignal(name.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(parse_signal("SIGINT").unwrap(), Signal::SIGINT);
        assert_eq!(parse_signal("term").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal(" SIGKILL ").unwrap(), Signal::SIGKILL);
        assert!(matches!(parse_signal("SIGNOPE"), Err(PtyError::UnknownSignal(_))));
        assert!(parse_signal("").is_err());
    }
}

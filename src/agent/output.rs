//! Turning a child's output pipes into journal events.
//!
//! [`LineSplitter`] cuts a byte stream into lines the way upstream does (`\n`, `\r` and `\r\n`
//! end a line; the terminator is dropped; a blank line becomes `"\n"`). [`pump`] is the loop a
//! blocking thread runs per execution: it polls the pipes, reads in large chunks, and appends
//! each chunk's lines to the journal as one batch. Synchronous code on purpose: a blocking
//! thread per execution keeps the async workers free and is the fastest path for bulk output.
//! [`PumpThread`] owns such a thread for a supervisor (commands, isolated runs): one of the
//! runtime's blocking pool, reused from one execution to the next. [`exit_event`] is the
//! terminal event their supervisors write.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tokio::sync::oneshot;

use super::now_ms;
use super::process::ExitStatus;
use super::stream::{EventWriter, Journal, OutputKind};
use crate::wire::StreamEvent;

/// A line longer than this is cut into several events, so one endless line cannot grow memory.
const MAX_LINE: usize = 1 << 20;
const READ_CHUNK: usize = 256 << 10;
/// Capacity asked for the output pipes (Linux's default unprivileged maximum).
const PIPE_SIZE: libc::c_int = 1 << 20;

/// Splits a byte stream into lines across arbitrary chunk boundaries.
#[derive(Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
    /// The previous chunk ended with `\r`; a leading `\n` in the next one belongs to it.
    after_cr: bool,
}

impl LineSplitter {
    /// Feeds a chunk, calling `emit` for every complete line (without its terminator).
    pub fn feed(&mut self, mut chunk: &[u8], mut emit: impl FnMut(&[u8])) {
        if self.after_cr && chunk.first() == Some(&b'\n') {
            chunk = &chunk[1..];
        }
        self.after_cr = false;
        while let Some(i) = memchr::memchr2(b'\n', b'\r', chunk) {
            if self.pending.is_empty() {
                emit(&chunk[..i]);
            } else {
                self.pending.extend_from_slice(&chunk[..i]);
                emit(&self.pending);
                self.pending.clear();
            }
            let was_cr = chunk[i] == b'\r';
            chunk = &chunk[i + 1..];
            if was_cr {
                match chunk.first() {
                    Some(b'\n') => chunk = &chunk[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.pending.extend_from_slice(chunk);
        while self.pending.len() >= MAX_LINE {
            let cut = utf8_boundary(&self.pending, MAX_LINE);
            emit(&self.pending[..cut]);
            self.pending.drain(..cut);
        }
    }

    /// Emits a trailing unterminated line, if any.
    pub fn flush(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.pending.is_empty() {
            emit(&self.pending);
            self.pending.clear();
        }
    }
}

/// The largest index <= `max` that does not split a UTF-8 sequence (falls back to `max`).
fn utf8_boundary(bytes: &[u8], max: usize) -> usize {
    (max.saturating_sub(3)..=max)
        .rev()
        .find(|&i| i == bytes.len() || (bytes[i] & 0xC0) != 0x80)
        .unwrap_or(max)
}

/// How output bytes become events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// One event per line, terminator dropped, blank line as `"\n"` (commands, sessions).
    Lines,
    /// One event per read, bytes as they came (kernels); UTF-8 sequences are never split.
    Chunks,
}

/// Turns one stream's bytes into events according to a [`Framing`].
struct Framer {
    framing: Framing,
    lines: LineSplitter,
    /// Bytes of an incomplete UTF-8 sequence held back until the next chunk.
    carry: Vec<u8>,
}

impl Framer {
    fn new(framing: Framing) -> Self {
        Self {
            framing,
            lines: LineSplitter::default(),
            carry: Vec::new(),
        }
    }

    fn feed(&mut self, data: &[u8], kind: OutputKind, ts: i64, w: &mut EventWriter<'_>) {
        match self.framing {
            Framing::Lines => self.lines.feed(data, |line| w.output_line(kind, line, ts)),
            Framing::Chunks => {
                self.carry.extend_from_slice(data);
                let keep = match std::str::from_utf8(&self.carry) {
                    Ok(_) => 0,
                    // An incomplete sequence at the end waits for its remaining bytes.
                    Err(e) if e.error_len().is_none() => self.carry.len() - e.valid_up_to(),
                    Err(_) => 0,
                };
                let cut = self.carry.len() - keep;
                if cut > 0 {
                    w.output_chunk(kind, &self.carry[..cut], ts);
                    self.carry.drain(..cut);
                }
            }
        }
    }

    fn flush(&mut self, kind: OutputKind, ts: i64, w: &mut EventWriter<'_>) {
        self.lines.flush(|line| w.output_line(kind, line, ts));
        if !self.carry.is_empty() {
            w.output_chunk(kind, &self.carry, ts);
            self.carry.clear();
        }
    }
}

/// What a [`controlled_pump`] hands to its caller.
pub enum Control<'a> {
    /// A line written to the control pipe (without `\n`); all output written before it has
    /// already been appended to the current journal.
    Line(&'a [u8]),
    /// The control pipe closed: the driver process is gone.
    Closed,
}

/// The journal a long-lived driver's output currently belongs to (none between runs).
pub type CurrentJournal = std::sync::Mutex<Option<Arc<Journal>>>;

/// Pump for a long-lived driver process (bash session, built-in interpreter): output pipes
/// feed the journal in `current`, and a control pipe carries one line per message. Before a
/// control line is handed to `on_control`, every byte already in the output pipes is appended
/// and partial lines are flushed, so a run's output always precedes its end. Runs until the
/// control pipe closes.
pub fn controlled_pump(
    sources: Vec<Source>,
    ctrl: OwnedFd,
    framing: Framing,
    current: &CurrentJournal,
    mut on_control: impl FnMut(Control<'_>, Option<&Arc<Journal>>),
) {
    for s in &sources {
        let _ = set_nonblocking(&s.fd);
    }
    let mut framers: Vec<Framer> = sources.iter().map(|_| Framer::new(framing)).collect();
    let mut open: Vec<bool> = sources.iter().map(|_| true).collect();
    let mut buf = vec![0u8; 64 << 10];
    let mut ctrl_text = Vec::new();
    let journal = || current.lock().unwrap_or_else(|e| e.into_inner()).clone();

    // Reads whatever a source has; output between runs has no journal and is dropped.
    let take = |i: usize, framers: &mut Vec<Framer>, open: &mut Vec<bool>, buf: &mut [u8]| -> bool {
        match read_some(&sources[i].fd, buf) {
            ReadOutcome::Data(n) => {
                let kind = sources[i].kind;
                match journal() {
                    Some(j) => {
                        j.write_bulk(2 * n + 1024, |w| framers[i].feed(&buf[..n], kind, now_ms(), w));
                    }
                    None => framers[i] = Framer::new(framing),
                }
                true
            }
            ReadOutcome::Eof => {
                open[i] = false;
                false
            }
            ReadOutcome::WouldBlock => false,
        }
    };
    loop {
        let mut fds = vec![PollFd::new(ctrl.as_fd(), PollFlags::POLLIN)];
        let polled: Vec<usize> = (0..sources.len()).filter(|&i| open[i]).collect();
        fds.extend(
            polled
                .iter()
                .map(|&i| PollFd::new(sources[i].fd.as_fd(), PollFlags::POLLIN)),
        );
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => break,
        }
        let ready = |f: &PollFd<'_>| f.revents().is_some_and(|r| !r.is_empty());
        let ctrl_ready = ready(&fds[0]);
        let readable: Vec<usize> = polled
            .iter()
            .zip(&fds[1..])
            .filter(|(_, f)| ready(f))
            .map(|(&i, _)| i)
            .collect();
        drop(fds);
        for i in readable {
            take(i, &mut framers, &mut open, &mut buf);
        }
        if !ctrl_ready {
            continue;
        }
        let mut small = [0u8; 4096];
        let n = match nix::unistd::read(&ctrl, &mut small) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => continue,
            Err(_) => 0,
        };
        ctrl_text.extend_from_slice(&small[..n]);
        if n > 0 && !ctrl_text.contains(&b'\n') {
            continue;
        }
        // Everything the driver wrote before this control message is in the pipes now.
        for i in 0..sources.len() {
            while open[i] && take(i, &mut framers, &mut open, &mut buf) {}
        }
        let j = journal();
        if let Some(j) = &j {
            let ts = now_ms();
            j.write(|w| {
                for (framer, source) in framers.iter_mut().zip(&sources) {
                    framer.flush(source.kind, ts, w);
                }
            });
        }
        while let Some(i) = ctrl_text.iter().position(|&b| b == b'\n') {
            on_control(Control::Line(&ctrl_text[..i]), j.as_ref());
            ctrl_text.drain(..=i);
        }
        if n == 0 {
            break;
        }
    }
    on_control(Control::Closed, journal().as_ref());
}

/// One pipe the pump reads.
pub struct Source {
    /// Read end, set non-blocking by the pump.
    pub fd: OwnedFd,
    /// Which event type its lines become.
    pub kind: OutputKind,
}

/// Reads `sources` until all reach EOF, or until `stop` becomes readable (the process exited),
/// in which case whatever is already buffered is drained and the rest abandoned: grandchildren
/// that keep a pipe open must not hold the stream hostage. Lines go to `journal` with
/// `timestamp()` taken once per chunk.
pub fn pump(sources: Vec<Source>, stop: Option<OwnedFd>, journal: &Arc<Journal>, now_ms: fn() -> i64) {
    let mut splitters: Vec<LineSplitter> = sources.iter().map(|_| LineSplitter::default()).collect();
    let mut open: Vec<bool> = sources.iter().map(|_| true).collect();
    for s in &sources {
        let _ = set_nonblocking(&s.fd);
        // A larger pipe lets each read take a whole READ_CHUNK (the default holds 64 KiB), so
        // bulk output costs fewer reads, batches and wake-ups on both sides. Best effort.
        let _ = nix::fcntl::fcntl(&s.fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
    }
    let mut buf = vec![0u8; READ_CHUNK];
    let mut stopping = false;
    while open.iter().any(|&o| o) {
        if !stopping {
            let mut fds: Vec<PollFd<'_>> = sources
                .iter()
                .zip(&open)
                .filter(|(_, &o)| o)
                .map(|(s, _)| PollFd::new(s.fd.as_fd(), PollFlags::POLLIN))
                .collect();
            if let Some(stop) = &stop {
                fds.push(PollFd::new(stop.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
            }
            if stop.is_some()
                && fds
                    .last()
                    .and_then(|f| f.revents())
                    .is_some_and(|r| !r.is_empty())
            {
                stopping = true;
            }
        }
        let mut progressed = false;
        for (i, source) in sources.iter().enumerate() {
            if !open[i] {
                continue;
            }
            match read_some(&source.fd, &mut buf) {
                ReadOutcome::Data(n) => {
                    progressed = true;
                    let ts = now_ms();
                    let kind = source.kind;
                    let splitter = &mut splitters[i];
                    // Rendered SSE is about twice the size of typical output (short lines).
                    journal.write_bulk(2 * n + 1024, |w: &mut EventWriter<'_>| {
                        splitter.feed(&buf[..n], |line| w.output_line(kind, line, ts));
                    });
                }
                ReadOutcome::Eof => open[i] = false,
                ReadOutcome::WouldBlock => {}
            }
        }
        if stopping && !progressed {
            break; // drained everything that was buffered when the process exited
        }
    }
    let ts = now_ms();
    for (source, splitter) in sources.iter().zip(&mut splitters) {
        journal.write(|w| splitter.flush(|line| w.output_line(source.kind, line, ts)));
    }
}

/// A [`pump`] running on its own thread, and the means to stop it.
pub struct PumpThread {
    /// Dropping this end makes its peer readable, which tells the pump the process has exited.
    stop: Option<UnixStream>,
    /// Fires (or errors, if the thread never started) once the pump has returned.
    done: oneshot::Receiver<()>,
}

impl PumpThread {
    /// Starts a pump over `sources` into `journal` on a thread of the runtime's blocking pool
    /// (or, outside a runtime, on a new thread called `name`).
    pub fn start(name: String, sources: Vec<Source>, journal: Arc<Journal>) -> Self {
        let (done_tx, done) = oneshot::channel();
        let (stop, stop_rx) = match UnixStream::pair() {
            Ok((a, b)) => (Some(a), Some(OwnedFd::from(b))),
            // Without a stop signal the pump reads until every pipe closes.
            Err(_) => (None, None),
        };
        let run = move || {
            pump(sources, stop_rx, &journal, now_ms);
            let _ = done_tx.send(());
        };
        // On the runtime's blocking pool, whose idle threads wait a while for more work: a
        // command then pays no thread start (a 2 MiB stack mapped and unmapped, a clone).
        // Outside a runtime, on a thread of its own called `name`.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(run)),
            Err(_) => {
                if let Err(e) = std::thread::Builder::new().name(name).spawn(run) {
                    tracing::error!(error = %e, "cannot start output thread");
                }
            }
        }
        Self { stop, done }
    }

    /// Tells the pump the process has exited and waits until it has appended what was
    /// already buffered in the pipes.
    pub async fn drain(self) {
        drop(self.stop);
        let _ = self.done.await;
    }
}

/// The terminal event of a process that exited with `status`: `execution_complete` on
/// success, else an `error` with `code` as its value and `note` (why it was stopped, if it
/// was) after the status in the traceback.
pub fn exit_event(status: ExitStatus, code: i32, elapsed_ms: u64, note: Option<String>) -> StreamEvent {
    if status.success() {
        return StreamEvent::complete(elapsed_ms, now_ms());
    }
    let mut traceback = vec![status.describe()];
    traceback.extend(note);
    StreamEvent::error("CommandExecError", code.to_string(), traceback, now_ms())
}

/// Result of one non-blocking read.
pub enum ReadOutcome {
    /// This many bytes were read.
    Data(usize),
    /// The writer side is closed.
    Eof,
    /// Nothing buffered right now.
    WouldBlock,
}

/// One `read(2)` into `buf`, retrying on EINTR.
pub fn read_some(fd: &OwnedFd, buf: &mut [u8]) -> ReadOutcome {
    loop {
        match nix::unistd::read(fd, buf) {
            Ok(0) => return ReadOutcome::Eof,
            Ok(n) => return ReadOutcome::Data(n),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(nix::errno::Errno::EAGAIN) => return ReadOutcome::WouldBlock,
            Err(_) => return ReadOutcome::Eof,
        }
    }
}

/// Sets `O_NONBLOCK` on `fd`.
pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL).map_err(io::Error::from)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<String> {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        for c in chunks {
            s.feed(c, |l| out.push(String::from_utf8_lossy(l).into_owned()));
        }
        s.flush(|l| out.push(String::from_utf8_lossy(l).into_owned()));
        out
    }

    #[test]
    fn splits_like_upstream() {
        assert_eq!(split(&[b"a\n\nb\n\n\nc\n"]), ["a", "", "b", "", "", "c"]);
        assert_eq!(split(&[b"a\r\nb\rc"]), ["a", "b", "c"]);
        assert_eq!(
            split(&[b"a\r", b"\nb"]),
            ["a", "b"],
            "CRLF split across chunks is one terminator"
        );
        assert_eq!(split(&[b"par", b"tial", b" line"]), ["partial line"]);
        assert_eq!(split(&[b"x\r", b"\r\n"]), ["x", ""]);
    }

    #[test]
    fn endless_line_is_cut_on_a_char_boundary() {
        let mut big = vec![b'a'; MAX_LINE - 1];
        big.extend_from_slice("é".as_bytes()); // straddles the cut
        big.extend_from_slice(b"tail");
        let lines = split(&[&big]);
        assert_eq!(lines.len(), 2);
        assert!(lines.iter().all(|l| !l.contains('\u{fffd}')));
        assert_eq!(lines.concat().len(), big.len());
    }
}

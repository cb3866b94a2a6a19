//! Turning a child's output pipes into journal events.
//!
//! [`LineSplitter`] cuts a byte stream into lines the way upstream does (`\n`, `\r` and `\r\n`
//! end a line; the terminator is dropped; a blank line becomes `"\n"`). [`pump`] is the loop a
//! dedicated thread runs per execution: it polls the pipes, reads in large chunks, and appends
//! each chunk's lines to the journal as one batch. Synchronous code on purpose: a blocking
//! thread per execution keeps the async workers free and is the fastest path for bulk output.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::stream::{EventWriter, Journal, OutputKind};

/// A line longer than this is cut into several events, so one endless line cannot grow memory.
const MAX_LINE: usize = 1 << 20;
const READ_CHUNK: usize = 256 << 10;

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
                    journal.write(|w: &mut EventWriter<'_>| {
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
    let _ = fd.as_raw_fd();
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

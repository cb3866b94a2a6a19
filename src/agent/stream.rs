//! Execution journals and their SSE rendering.
//!
//! Every execution owns a [`Journal`]: an append-only sequence of events with ids 1, 2, 3…,
//! stored already rendered as standard SSE (`id: N\ndata: <json>\n\n`). The newest bytes live
//! in a bounded in-memory ring of segments; older segments spill to a file in the state dir, so
//! a command that prints gigabytes keeps execd's memory flat; a finished journal over 64 KiB
//! moves the rest of its ring there too, as records outlive their streams. An HTTP stream is a
//! [`Cursor`] over the journal: it can start at the beginning or after any event id
//! (`Last-Event-ID`), reads spilled bytes from the file and live bytes from memory, and ends
//! right after the terminal event.
//!
//! Appends never touch the disk: writers (pump threads, but also supervisors and kernel tasks
//! on the async workers) only push rendered bytes into memory. One `journal-spill` thread,
//! shared by every journal, writes the excess to the spill files and then drops it from
//! memory; bytes stay readable from memory until they are on disk. A writer waits for that
//! thread only when it has fallen [`BACKLOG_CAP`] behind, which bounds memory; on an async
//! worker that wait goes through `block_in_place`, so the runtime keeps serving. Cursors are
//! async and read the spill file on the blocking pool.
//!
//! This module knows nothing about processes or HTTP.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use crate::wire::StreamEvent;

/// In-memory bytes a journal keeps before spilling its oldest segments to disk.
const MEMORY_CAP: usize = 1 << 20;
/// In-memory bytes past which a bulk writer waits for the spill thread to catch up.
const BACKLOG_CAP: usize = 2 * MEMORY_CAP;
/// In-memory bytes a finished journal keeps; the rest goes to its spill file.
const FINISHED_MEMORY_CAP: usize = 64 << 10;
/// Most bytes the spill thread writes for one journal before turning to the next.
const SPILL_WRITE: usize = 1 << 20;
/// Most bytes a cursor reads from the spill file at once.
const SPILL_READ: usize = 256 << 10;
/// SSE comment sent when a stream has been quiet this long, so proxies keep it open.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);
const KEEP_ALIVE_FRAME: &[u8] = b": keep-alive\n\n";

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl OutputKind {
    fn json_prefix(self) -> &'static [u8] {
        match self {
            OutputKind::Stdout => br#"{"type":"stdout","text":""#,
            OutputKind::Stderr => br#"{"type":"stderr","text":""#,
        }
    }
}

/// Renders events into SSE bytes; handed to the closure of [`Journal::write`].
pub struct EventWriter<'a> {
    buf: &'a mut Vec<u8>,
    next_id: &'a mut u64,
}

impl EventWriter<'_> {
    /// Appends an arbitrary event.
    pub fn event(&mut self, event: &StreamEvent) {
        self.frame_start();
        // Serializing a struct of strings and integers into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *self.buf, event);
        self.buf.extend_from_slice(b"\n\n");
    }

    /// Appends a `stdout`/`stderr` event whose text is `line`. An empty line is sent as `"\n"`,
    /// as upstream does, so that blank lines stay visible. Bytes that are not UTF-8 become U+FFFD.
    ///
    /// This is the hot path of command streaming, so the JSON is written by hand; a unit test
    /// checks that it parses to the same event serde would produce.
    pub fn output_line(&mut self, kind: OutputKind, line: &[u8], timestamp: i64) {
        self.output_chunk(kind, if line.is_empty() { b"\n" } else { line }, timestamp);
    }

    /// Appends a `stdout`/`stderr` event with `chunk` as its text, exactly as read (kernels
    /// send raw chunks, newlines included). Bytes that are not UTF-8 become U+FFFD.
    pub fn output_chunk(&mut self, kind: OutputKind, chunk: &[u8], timestamp: i64) {
        self.frame_start();
        self.buf.extend_from_slice(kind.json_prefix());
        match std::str::from_utf8(chunk) {
            Ok(text) => escape_json_into(self.buf, text),
            Err(_) => escape_json_into(self.buf, &String::from_utf8_lossy(chunk)),
        }
        self.buf.extend_from_slice(b"\",\"timestamp\":");
        self.buf
            .extend_from_slice(itoa_i64(timestamp, &mut [0u8; 20]).as_bytes());
        self.buf.extend_from_slice(b"}\n\n");
    }

    fn frame_start(&mut self) {
        self.buf.extend_from_slice(b"id: ");
        self.buf
            .extend_from_slice(itoa_i64(*self.next_id as i64, &mut [0u8; 20]).as_bytes());
        self.buf.extend_from_slice(b"\ndata: ");
        *self.next_id += 1;
    }
}

/// An append-only, replayable event log of one execution.
pub struct Journal {
    /// This journal, for the spill jobs its appends queue (set by `Arc::new_cyclic`).
    me: Weak<Journal>,
    /// Everything mutable; held only for short, non-async sections (appending a rendered
    /// batch, slicing a segment, planning a spill). Never held across `.await` or a disk write.
    inner: Mutex<Inner>,
    /// Signalled by the spill thread whenever it has moved bytes out of memory or stopped;
    /// bulk writers over [`BACKLOG_CAP`] wait on it.
    room: Condvar,
    /// Bumped on every append and on finish; cursors wait on it.
    changed: watch::Sender<u64>,
}

struct Inner {
    /// Id the next event gets.
    next_id: u64,
    /// Total rendered bytes ever appended.
    len: u64,
    /// Newest segments, oldest first; together they hold bytes `mem_start..len`.
    mem: VecDeque<Bytes>,
    /// Bytes `0..mem_start` are in the spill file; only the spill thread advances it, after
    /// its write has completed.
    mem_start: u64,
    mem_bytes: usize,
    /// The spill file, once the spill thread has created it.
    spill: Option<Arc<File>>,
    spill_path: PathBuf,
    /// A spill job for this journal is queued or running (at most one is).
    spilling: bool,
    /// The spill file could not be created or written: memory may grow rather than lose bytes.
    spill_failed: bool,
    /// `(first event id, byte offset)` of every appended batch, for resuming after an id.
    batches: Vec<(u64, u64)>,
    /// Set once the terminal event is in; later writes are dropped.
    finished: bool,
}

impl Journal {
    /// A new, empty journal that spills to `spill_path` if it outgrows memory.
    pub fn new(spill_path: PathBuf) -> Arc<Self> {
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            inner: Mutex::new(Inner {
                next_id: 1,
                len: 0,
                mem: VecDeque::new(),
                mem_start: 0,
                mem_bytes: 0,
                spill: None,
                spill_path,
                spilling: false,
                spill_failed: false,
                batches: Vec::new(),
                finished: false,
            }),
            room: Condvar::new(),
            changed: watch::Sender::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves only whole batches behind (bytes are pushed
        // after rendering, segments are popped only after their write), so the data stays
        // consistent and poisoning can be ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends the events rendered by `render` as one batch. Returns false (and appends
    /// nothing) when the journal is already finished. Never touches the disk; waits only while
    /// the spill thread is more than [`BACKLOG_CAP`] behind (see [`Journal::wait_for_room`]).
    pub fn write(&self, render: impl FnOnce(&mut EventWriter<'_>)) -> bool {
        self.append(false, 256, render)
    }

    /// Like [`Journal::write`] for a batch expected to render to about `expected` bytes (bulk
    /// output): the batch is rendered into a recycled buffer of that size.
    pub fn write_bulk(&self, expected: usize, render: impl FnOnce(&mut EventWriter<'_>)) -> bool {
        self.append(false, expected, render)
    }

    /// Appends one event.
    pub fn push(&self, event: &StreamEvent) -> bool {
        self.write(|w| w.event(event))
    }

    /// Appends the terminal event and closes the journal. A second call does nothing.
    pub fn finish(&self, terminal: &StreamEvent) -> bool {
        self.append(true, 256, |w| w.event(terminal))
    }

    /// Whether the terminal event is in.
    pub fn is_finished(&self) -> bool {
        self.lock().finished
    }

    fn append(&self, last: bool, capacity: usize, render: impl FnOnce(&mut EventWriter<'_>)) -> bool {
        let mut inner = self.lock();
        if inner.finished {
            return false;
        }
        let first_id = inner.next_id;
        let mut buf = buffer(capacity);
        render(&mut EventWriter {
            buf: &mut buf,
            next_id: &mut inner.next_id,
        });
        if !buf.is_empty() {
            let offset = inner.len;
            inner.batches.push((first_id, offset));
            inner.len += buf.len() as u64;
            inner.mem_bytes += buf.len();
            inner.mem.push_back(into_bytes(buf));
        }
        inner.finished = last;
        let queue = !inner.spilling && !inner.spill_failed && inner.spill_plan().0 > 0;
        if queue {
            inner.spilling = true;
        }
        let behind = inner.behind();
        drop(inner);
        self.changed.send_modify(|v| *v += 1);
        if queue && !spill_queue(Job::Spill(self.me.clone())) {
            // No spill thread: keep everything in memory rather than lose bytes.
            let mut inner = self.lock();
            inner.spilling = false;
            inner.spill_failed = true;
        } else if behind && !last {
            self.wait_for_room();
        }
        true
    }

    /// Waits until the spill thread is no more than [`BACKLOG_CAP`] behind: what bounds
    /// memory when output comes faster than the disk takes it. A plain thread (pump threads)
    /// simply blocks. A task on a worker of the multi-threaded runtime (kernel message
    /// handlers) blocks through `block_in_place`, which first hands that worker's other tasks
    /// to another worker, so the runtime keeps serving. On a single-threaded runtime nothing
    /// can wait, and memory grows until the spill thread catches up.
    fn wait_for_room(&self) {
        let wait = || {
            let inner = self.lock();
            drop(
                self.room
                    .wait_while(inner, |i| i.behind())
                    .unwrap_or_else(|e| e.into_inner()),
            );
        };
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Err(_) => wait(),
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            Ok(_) => {}
        }
    }

    /// One step of the spill thread: writes the oldest in-memory segments that are over the
    /// cap (at most [`SPILL_WRITE`] bytes) to the file, then drops them from memory. Returns
    /// whether more is left to spill. Blocking; runs only on the spill thread.
    fn spill_step(&self) -> bool {
        let (file, at, segments) = {
            let inner = self.lock();
            let (count, _) = inner.spill_plan();
            if count == 0 {
                return self.spill_done(inner, false);
            }
            let segments: Vec<Bytes> = inner.mem.iter().take(count).cloned().collect();
            (inner.spill.clone(), inner.mem_start, segments)
        };
        let file = match file {
            Some(f) => f,
            None => match self.create_spill() {
                Some(f) => f,
                None => return self.spill_done(self.lock(), true),
            },
        };
        if let Err(e) = write_segments(&file, at, &segments) {
            tracing::warn!(error = %e, "journal spill write failed; keeping it in memory");
            return self.spill_done(self.lock(), true);
        }
        let mut inner = self.lock();
        // Appends only push at the back and only this thread pops, so the front segments are
        // still the ones just written.
        for _ in &segments {
            if let Some(segment) = inner.mem.pop_front() {
                inner.mem_start += segment.len() as u64;
                inner.mem_bytes -= segment.len();
            }
        }
        let more = inner.spill_plan().0 > 0;
        if more {
            drop(inner);
            self.room.notify_all();
            true
        } else {
            self.spill_done(inner, false)
        }
    }

    /// Marks the spill job over (and failed, if it did) and wakes waiting writers.
    fn spill_done(&self, mut inner: MutexGuard<'_, Inner>, failed: bool) -> bool {
        inner.spilling = false;
        inner.spill_failed |= failed;
        drop(inner);
        self.room.notify_all();
        false
    }

    fn create_spill(&self) -> Option<Arc<File>> {
        let path = self.lock().spill_path.clone();
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
        {
            Ok(f) => {
                let f = Arc::new(f);
                self.lock().spill = Some(Arc::clone(&f));
                Some(f)
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "journal cannot spill; keeping it in memory");
                None
            }
        }
    }

    /// A cursor positioned at the start, or right after event `after` when given. Never reads
    /// the disk: when `after` lies inside a batch that has spilled, the cursor finds its place
    /// on its first read (or in [`Cursor::seek`]), off the async workers.
    pub fn cursor(self: &Arc<Self>, after: Option<u64>) -> Cursor {
        let (pos, seek) = match after {
            None | Some(0) => (0, None),
            // Nothing comes after the largest id a client can name (a `Last-Event-ID` of
            // u64::MAX): the end of the journal.
            Some(id) => self.position_of(id.saturating_add(1)),
        };
        Cursor {
            journal: Arc::clone(self),
            pos,
            seek,
            changed: self.changed.subscribe(),
        }
    }

    /// Byte offset where event `id` starts (the end of the journal for ids not yet written),
    /// or where to find it when the batch holding it has spilled.
    fn position_of(&self, id: u64) -> (u64, Option<Seek>) {
        let inner = self.lock();
        if id >= inner.next_id {
            return (inner.len, None);
        }
        // The batch holding `id` is the last one whose first id is <= id.
        let i = inner.batches.partition_point(|&(first, _)| first <= id) - 1;
        let (first, start) = inner.batches[i];
        if first == id {
            return (start, None);
        }
        let end = inner.batches.get(i + 1).map_or(inner.len, |&(_, offset)| offset);
        if start >= inner.mem_start {
            let bytes = inner.slice(start, end);
            return (start + skip_events(&bytes, id - first), None);
        }
        // Spilled batches never come back to memory, so these bounds stay valid.
        let seek = Seek {
            file: inner.spill.clone(),
            end,
            skip: id - first,
        };
        (start, Some(seek))
    }

    /// Waits (for tests) until no spill job is queued or running.
    #[cfg(test)]
    fn wait_spilled(&self) {
        let inner = self.lock();
        let (_inner, timeout) = self
            .room
            .wait_timeout_while(inner, Duration::from_secs(10), |i| i.spilling)
            .unwrap_or_else(|e| e.into_inner());
        assert!(!timeout.timed_out(), "spill thread did not finish");
    }
}

impl Inner {
    /// Whether the spill thread has fallen more than [`BACKLOG_CAP`] behind.
    fn behind(&self) -> bool {
        self.spilling && self.mem_bytes > BACKLOG_CAP
    }

    /// How many of the oldest segments should move to disk now, and their total size: those
    /// over [`MEMORY_CAP`] (the newest segment always stays), or every segment of a finished
    /// journal over [`FINISHED_MEMORY_CAP`] or with a spill file already (finished records
    /// are kept for a day; their journals must not hold memory). At most [`SPILL_WRITE`]
    /// bytes, but at least one segment.
    fn spill_plan(&self) -> (usize, usize) {
        let (cap, keep) = match self.finished {
            true if self.mem_bytes > FINISHED_MEMORY_CAP || self.spill.is_some() => (0, 0),
            true => return (0, 0),
            false => (MEMORY_CAP, 1),
        };
        let (mut count, mut bytes) = (0, 0);
        for segment in &self.mem {
            if self.mem_bytes - bytes <= cap || self.mem.len() - count <= keep {
                break;
            }
            if count > 0 && bytes + segment.len() > SPILL_WRITE {
                break;
            }
            count += 1;
            bytes += segment.len();
        }
        (count, bytes)
    }

    /// Bytes `from..to`, all of which are in memory.
    fn slice(&self, from: u64, to: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity((to - from) as usize);
        let mut seg_start = self.mem_start;
        for seg in &self.mem {
            let seg_end = seg_start + seg.len() as u64;
            if seg_end > from && seg_start < to {
                let a = from.saturating_sub(seg_start) as usize;
                let b = (to.min(seg_end) - seg_start) as usize;
                out.extend_from_slice(&seg[a..b]);
            }
            seg_start = seg_end;
        }
        out
    }

    /// The in-memory segment containing `pos`, sliced from `pos` to the segment's end.
    fn live_from(&self, pos: u64) -> Option<Bytes> {
        let mut seg_start = self.mem_start;
        for seg in &self.mem {
            let seg_end = seg_start + seg.len() as u64;
            if pos < seg_end {
                return Some(seg.slice((pos - seg_start) as usize..));
            }
            seg_start = seg_end;
        }
        None
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.spill.is_some() {
            // The last reference may go on an async worker (a cursor); unlinking is left to
            // the spill thread. Without one the file stays until the state dir is cleaned.
            spill_queue(Job::Remove(std::mem::take(&mut self.spill_path)));
        }
    }
}

/// Writes `segments` to `file` from offset `at`, as one write when there are several (the
/// segments of small writers are small).
fn write_segments(file: &File, at: u64, segments: &[Bytes]) -> io::Result<()> {
    if let [one] = segments {
        return file.write_all_at(one, at);
    }
    let total = segments.iter().map(Bytes::len).sum();
    let mut buf = buffer(total);
    for segment in segments {
        buf.extend_from_slice(segment);
    }
    let written = file.write_all_at(&buf, at);
    drop(into_bytes(buf));
    written
}

/// Work for the spill thread.
enum Job {
    /// Move a journal's excess to its file (the journal may be gone by then).
    Spill(Weak<Journal>),
    /// Unlink the spill file of a dropped journal.
    Remove(PathBuf),
}

/// Queues `job` for the spill thread, starting it on first use. False if it cannot run.
fn spill_queue(job: Job) -> bool {
    // The thread lives as long as the process: journals are created until shutdown, and a
    // sender kept here means its receiver never sees a hang-up.
    static SPILLER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    let sender = SPILLER.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        match std::thread::Builder::new()
            .name("journal-spill".into())
            .spawn(move || run_spiller(rx))
        {
            Ok(_) => Some(tx),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the journal spill thread; journals stay in memory");
                None
            }
        }
    });
    match sender {
        // A send only moves the job into the channel; it never waits for the thread.
        Some(tx) => tx.send(job).is_ok(),
        None => false,
    }
}

/// The spill thread: serves journals round-robin, [`SPILL_WRITE`] bytes at a time, so one
/// journal under heavy output cannot starve the others.
fn run_spiller(rx: mpsc::Receiver<Job>) {
    let mut queue = VecDeque::new();
    loop {
        if queue.is_empty() {
            match rx.recv() {
                Ok(job) => queue.push_back(job),
                Err(_) => return,
            }
        }
        queue.extend(rx.try_iter());
        match queue.pop_front() {
            Some(Job::Spill(weak)) => {
                if let Some(journal) = weak.upgrade() {
                    if journal.spill_step() {
                        queue.push_back(Job::Spill(weak));
                    }
                }
            }
            Some(Job::Remove(path)) => {
                let _ = std::fs::remove_file(&path);
            }
            None => {}
        }
    }
}

/// Byte length of the first `n` events of `bytes` (each ends with a blank line, and event data
/// is single-line JSON, so `\n\n` only occurs at event ends).
fn skip_events(bytes: &[u8], n: u64) -> u64 {
    let mut pos = 0usize;
    for _ in 0..n {
        match memchr::memmem::find(&bytes[pos..], b"\n\n") {
            Some(i) => pos += i + 2,
            None => return bytes.len() as u64,
        }
    }
    pos as u64
}

/// A reader over a journal: yields SSE bytes from its position, waiting for live events, and
/// ends after the terminal event.
pub struct Cursor {
    journal: Arc<Journal>,
    pos: u64,
    /// Set while the position is still "`skip` events into the spilled batch at `pos`".
    seek: Option<Seek>,
    changed: watch::Receiver<u64>,
}

/// Where a resume point inside a spilled batch is still to be found.
struct Seek {
    file: Option<Arc<File>>,
    /// Where the batch ends.
    end: u64,
    /// Events of the batch to skip.
    skip: u64,
}

enum Next {
    Live(Bytes),
    Spilled(Arc<File>, u64, usize),
    Wait,
    End,
}

impl Cursor {
    /// Finds the cursor's position if it resumes inside a spilled batch, reading that batch
    /// on the blocking pool. [`Cursor::next_chunk`] does this itself; call it first to learn
    /// of an unreadable spill file before answering.
    pub async fn seek(&mut self) -> io::Result<()> {
        let Some(seek) = self.seek.take() else {
            return Ok(());
        };
        let file = seek
            .file
            .ok_or_else(|| io::Error::other("journal spill file missing"))?;
        let (start, len) = (self.pos, (seek.end - self.pos) as usize);
        let skipped = tokio::task::spawn_blocking(move || {
            let mut bytes = buffer(len);
            bytes.resize(len, 0);
            file.read_exact_at(&mut bytes, start)?;
            let skipped = skip_events(&bytes, seek.skip);
            drop(into_bytes(bytes));
            Ok::<_, io::Error>(skipped)
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))?;
        self.pos += skipped;
        Ok(())
    }

    /// The next chunk of bytes, a keep-alive comment after a quiet [`KEEP_ALIVE`], or `None`
    /// once the terminal event has been read.
    pub async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
        if let Err(e) = self.seek().await {
            return Some(Err(e));
        }
        loop {
            self.changed.borrow_and_update();
            let next = {
                let inner = self.journal.lock();
                if self.pos >= inner.len {
                    if inner.finished {
                        Next::End
                    } else {
                        Next::Wait
                    }
                } else if self.pos >= inner.mem_start {
                    match inner.live_from(self.pos) {
                        Some(b) => Next::Live(b),
                        None => Next::End,
                    }
                } else {
                    let want = (inner.mem_start - self.pos).min(SPILL_READ as u64) as usize;
                    match &inner.spill {
                        Some(f) => Next::Spilled(Arc::clone(f), self.pos, want),
                        None => Next::End,
                    }
                }
            };
            match next {
                Next::Live(bytes) => {
                    self.pos += bytes.len() as u64;
                    return Some(Ok(bytes));
                }
                Next::Spilled(file, at, want) => {
                    let read = tokio::task::spawn_blocking(move || {
                        let mut buf = buffer(want);
                        buf.resize(want, 0);
                        file.read_exact_at(&mut buf, at).map(|()| buf)
                    })
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e)));
                    return Some(read.map(|buf| {
                        self.pos += buf.len() as u64;
                        into_bytes(buf)
                    }));
                }
                Next::End => return None,
                Next::Wait => {
                    match tokio::time::timeout(KEEP_ALIVE, self.changed.changed()).await {
                        Ok(Ok(())) => continue,
                        // The journal is gone (cannot happen while we hold an Arc) or quiet.
                        Ok(Err(_)) => return None,
                        Err(_) => return Some(Ok(Bytes::from_static(KEEP_ALIVE_FRAME))),
                    }
                }
            }
        }
    }

    /// The cursor as a stream of body chunks.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send {
        futures_util::stream::unfold(self, |mut cursor| async move {
            cursor.next_chunk().await.map(|chunk| (chunk, cursor))
        })
    }
}

/// Buffers of at least this many bytes are recycled: the agent's allocator (musl) maps every
/// allocation this large afresh and unmaps it when freed, so without reuse each bulk batch and
/// each spill read would pay a page fault per 4 KiB it touches.
const RECYCLE_MIN: usize = 64 << 10;
/// Larger buffers are freed rather than kept.
const RECYCLE_MAX: usize = 1 << 20;
/// Most spare buffers kept, bounding the memory they hold.
const SPARES: usize = 4;

/// Spare large buffers, shared by every journal; taken and returned under a short lock.
static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

fn spare() -> MutexGuard<'static, Vec<Vec<u8>>> {
    // Holds plain Vecs pushed and popped whole; a poisoned lock still holds valid ones.
    SPARE.lock().unwrap_or_else(|e| e.into_inner())
}

/// An empty buffer of at least `capacity` bytes, recycled when it is large.
fn buffer(capacity: usize) -> Vec<u8> {
    if capacity >= RECYCLE_MIN {
        if let Some(mut buf) = spare().pop() {
            buf.clear();
            buf.reserve(capacity);
            return buf;
        }
    }
    Vec::with_capacity(capacity)
}

/// `buf` as `Bytes`; a large one goes back to the spares once the last reference is dropped.
fn into_bytes(buf: Vec<u8>) -> Bytes {
    if buf.capacity() >= RECYCLE_MIN {
        Bytes::from_owner(Recycled(buf))
    } else {
        Bytes::from(buf)
    }
}

/// Owner of a large `Bytes` buffer that returns it to the spares when dropped.
struct Recycled(Vec<u8>);

impl AsRef<[u8]> for Recycled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Recycled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.0);
        if buf.capacity() <= RECYCLE_MAX {
            let mut spare = spare();
            if spare.len() < SPARES {
                spare.push(buf);
            }
        }
    }
}

/// Writes `s` as the inside of a JSON string.
pub fn escape_json_into(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        // Most output needs no escaping: skip it eight bytes at a time.
        if let Some(word) = bytes.get(i..i + 8).and_then(|w| <[u8; 8]>::try_from(w).ok()) {
            if !needs_escape(u64::from_le_bytes(word)) {
                i += 8;
                continue;
            }
        }
        let b = bytes[i];
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => b"",
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xf) as usize],
            ]);
        } else {
            out.extend_from_slice(escape);
        }
        i += 1;
        start = i;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Whether any of the eight bytes in `w` is a control character, `"` or `\`. Uses the classic
/// "some byte is below n" test, `(w - n * ONES) & !w & HIGH`, which never misses one (n <= 128);
/// the caller checks flagged words byte by byte, so the answer only needs no false negatives.
fn needs_escape(w: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let control = below(w, 0x20);
    let quote = below(w ^ (ONES * u64::from(b'"')), 1);
    let backslash = below(w ^ (ONES * u64::from(b'\\')), 1);
    control | quote | backslash != 0
}

fn itoa_i64(v: i64, buf: &mut [u8; 20]) -> &str {
    let neg = v < 0;
    let mut n = v.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if neg {
        i -= 1;
        buf[i] = b'-';
    }
    // Only ASCII digits and '-' were written.
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::EventType;

    fn journal() -> (tempfile::TempDir, Arc<Journal>) {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::new(dir.path().join("j.sse"));
        (dir, j)
    }

    async fn drain(mut c: Cursor) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = c.next_chunk().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    fn ids(bytes: &[u8]) -> Vec<u64> {
        String::from_utf8_lossy(bytes)
            .lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .map(|n| n.parse().unwrap())
            .collect()
    }

    #[test]
    fn hand_written_output_event_matches_serde() {
        for line in [
            &b"plain"[..],
            b"",
            b"q\"uote\\ tab\t ctl\x01\x1f",
            b"\xff\xfebad",
            "ünï".as_bytes(),
        ] {
            let mut buf = Vec::new();
            let mut id = 7;
            EventWriter {
                buf: &mut buf,
                next_id: &mut id,
            }
            .output_line(OutputKind::Stderr, line, -5);
            let text = String::from_utf8(buf).unwrap();
            let data = text
                .strip_prefix("id: 7\ndata: ")
                .unwrap()
                .strip_suffix("\n\n")
                .unwrap();
            let parsed: StreamEvent = serde_json::from_str(data).unwrap();
            let expected_text = if line.is_empty() {
                "\n".to_owned()
            } else {
                String::from_utf8_lossy(line).into_owned()
            };
            let expected = StreamEvent {
                text: Some(expected_text),
                ..StreamEvent::new(EventType::Stderr, -5)
            };
            assert_eq!(parsed, expected);
        }
    }

    #[test]
    fn escapes_every_ascii_byte_at_every_position_of_a_word() {
        for b in 0u8..0x80 {
            for pos in 0..17 {
                let mut text = vec![b'a'; 17];
                text[pos] = b;
                let text = String::from_utf8(text).unwrap();
                let mut json = vec![b'"'];
                escape_json_into(&mut json, &text);
                json.push(b'"');
                let back: String = serde_json::from_slice(&json).unwrap();
                assert_eq!(back, text, "byte {b:#x} at {pos}");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn escaped_text_parses_back_to_itself(s in "(?s).{0,40}", noise in proptest::collection::vec(0u8..0x80, 0..40)) {
            // Arbitrary text, and ASCII dense in control characters, quotes and backslashes.
            for text in [s, String::from_utf8(noise).unwrap()] {
                let mut json = vec![b'"'];
                escape_json_into(&mut json, &text);
                json.push(b'"');
                let back: String = serde_json::from_slice(&json).unwrap();
                proptest::prop_assert_eq!(back, text);
            }
        }
    }

    /// Issue 20 (found by `fuzz/` target `sse_resume`): `Last-Event-ID: 18446744073709551615`
    /// overflowed `id + 1` and panicked the request; it now resumes at the end.
    #[tokio::test]
    async fn issue20_last_event_id_u64_max_resumes_at_the_end() {
        let (_dir, j) = journal();
        j.push(&StreamEvent::init("x", 0));
        j.finish(&StreamEvent::complete(1, 0));
        assert!(drain(j.cursor(Some(u64::MAX))).await.is_empty());
        assert!(drain(j.cursor(Some(u64::MAX - 1))).await.is_empty());
        assert_eq!(ids(&drain(j.cursor(Some(1))).await), [2]);
    }

    #[tokio::test]
    async fn replay_after_each_id_yields_exactly_the_rest() {
        let (_d, j) = journal();
        j.write(|w| {
            for i in 0..5 {
                w.output_line(OutputKind::Stdout, format!("l{i}").as_bytes(), 1);
            }
        });
        j.push(&StreamEvent::init("x", 1));
        j.finish(&StreamEvent::complete(3, 2));
        assert!(
            !j.push(&StreamEvent::init("late", 3)),
            "writes after finish are dropped"
        );
        for after in 0..=8 {
            let got = ids(&drain(j.cursor(Some(after))).await);
            let want: Vec<u64> = (after + 1..=7).collect();
            assert_eq!(got, want, "after {after}");
        }
    }

    #[tokio::test]
    async fn spills_beyond_memory_cap_and_replays_from_disk() {
        let (dir, j) = journal();
        let line = vec![b'a'; 1000];
        for _ in 0..3000 {
            j.write(|w| w.output_line(OutputKind::Stdout, &line, 1));
        }
        j.wait_spilled();
        assert!(dir.path().join("j.sse").exists(), "oldest segments spilled");
        assert!(j.lock().mem_bytes <= MEMORY_CAP + 2000);
        j.finish(&StreamEvent::complete(1, 1));
        let all = drain(j.cursor(None)).await;
        assert_eq!(ids(&all), (1..=3001).collect::<Vec<_>>());
        let tail = ids(&drain(j.cursor(Some(10))).await);
        assert_eq!(tail.first(), Some(&11));
        assert_eq!(tail.len(), 2991);
        drop(j);
        let path = dir.path().join("j.sse");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while path.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!path.exists(), "spill file removed with the journal");
    }

    #[tokio::test]
    async fn finished_journal_moves_its_memory_to_the_spill_file() {
        let (dir, j) = journal();
        let line = vec![b'b'; 1000];
        for _ in 0..1500 {
            j.write(|w| w.output_line(OutputKind::Stdout, &line, 1));
        }
        let mut live = j.cursor(Some(1400));
        let first = live.next_chunk().await.unwrap().unwrap();
        assert!(j.lock().mem_bytes > FINISHED_MEMORY_CAP);
        j.finish(&StreamEvent::complete(1, 1));
        j.wait_spilled();
        assert_eq!(
            j.lock().mem_bytes,
            0,
            "a finished journal keeps nothing in memory"
        );
        assert!(dir.path().join("j.sse").exists());
        let mut rest = first.to_vec();
        rest.extend(drain(live).await);
        assert_eq!(
            ids(&rest),
            (1401..=1501).collect::<Vec<_>>(),
            "a reader mid-way carries on"
        );
        assert_eq!(ids(&drain(j.cursor(None)).await), (1..=1501).collect::<Vec<_>>());
        assert_eq!(ids(&drain(j.cursor(Some(1499))).await), [1500, 1501]);
    }

    #[tokio::test]
    async fn small_finished_journal_stays_in_memory() {
        let (dir, j) = journal();
        j.write(|w| w.output_line(OutputKind::Stdout, b"hi", 1));
        j.finish(&StreamEvent::complete(1, 1));
        assert!(!dir.path().join("j.sse").exists(), "no file for a small journal");
        assert_eq!(ids(&drain(j.cursor(None)).await), [1, 2]);
    }

    #[tokio::test]
    async fn live_reader_sees_events_as_they_arrive() {
        let (_d, j) = journal();
        let mut c = j.cursor(None);
        let writer = Arc::clone(&j);
        let t = std::thread::spawn(move || {
            for i in 0..100 {
                writer.write(|w| w.output_line(OutputKind::Stdout, format!("{i}").as_bytes(), 1));
            }
            writer.finish(&StreamEvent::complete(1, 1));
        });
        let mut out = Vec::new();
        while let Some(chunk) = c.next_chunk().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        t.join().unwrap();
        assert_eq!(ids(&out), (1..=101).collect::<Vec<_>>());
    }
    #[tokio::test]
    async fn issue11_resume_inside_a_spilled_batch_is_exact() {
        let (_d, j) = journal();
        let line = vec![b'c'; 1000];
        // Batches of ten events, so most resume points lie inside a batch.
        for _ in 0..300 {
            j.write(|w| {
                for _ in 0..10 {
                    w.output_line(OutputKind::Stdout, &line, 1);
                }
            });
        }
        j.wait_spilled();
        assert!(j.lock().mem_start > 100_000, "the first batches spilled");
        for after in [1, 5, 9, 10, 11, 15, 99] {
            let mut c = j.cursor(Some(after));
            c.seek().await.unwrap();
            let first = c.next_chunk().await.unwrap().unwrap();
            assert_eq!(ids(&first).first(), Some(&(after + 1)), "after {after}");
        }
        j.finish(&StreamEvent::complete(1, 1));
        assert_eq!(
            ids(&drain(j.cursor(Some(15))).await),
            (16..=3001).collect::<Vec<_>>()
        );
    }

    #[test]
    fn issue11_appends_never_wait_for_the_spill_file() {
        // A FIFO as the spill file: a write to it blocks once its buffer is full, as a stalled
        // disk would. Appends must still return; the bytes stay readable from memory.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.sse");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let j = Journal::new(path);
        let writer = Arc::clone(&j);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let line = vec![b'd'; 1000];
            for _ in 0..3000 {
                writer.write(|w| w.output_line(OutputKind::Stdout, &line, 1));
            }
            writer.finish(&StreamEvent::complete(1, 1));
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("appends returned without waiting for the disk");
        j.wait_spilled();
        let all = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(drain(j.cursor(None)));
        assert_eq!(ids(&all), (1..=3001).collect::<Vec<_>>());
    }
}

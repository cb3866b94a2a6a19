//! Execution journals and their SSE rendering.
//!
//! Every execution owns a [`Journal`]: an append-only sequence of events with ids 1, 2, 3…,
//! stored already rendered as standard SSE (`id: N\ndata: <json>\n\n`). The newest bytes live
//! in a bounded in-memory ring of segments; older segments spill to a file in the state dir
//! (packed to about half their size, and unpacked exactly when read: see [`packed`]), so
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

mod packed;
mod render;

pub use render::{escape_json_into, EventWriter};

/// In-memory bytes a journal keeps before spilling its oldest segments to disk.
const MEMORY_CAP: usize = 1 << 20;
/// In-memory bytes past which a bulk writer waits for the spill thread to catch up.
const BACKLOG_CAP: usize = 2 * MEMORY_CAP;
/// In-memory bytes a finished journal keeps; the rest goes to its spill file.
const FINISHED_MEMORY_CAP: usize = 64 << 10;
/// Most bytes the spill thread writes for one journal before turning to the next.
const SPILL_WRITE: usize = 1 << 20;
/// Most bytes a cursor reads back from the spill file at once (but at least one whole batch).
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
    /// The shape of each segment in `mem`, same order, for packing it when it spills (the spill
    /// thread takes it out when it starts the write); `None` for a batch kept raw.
    shapes: VecDeque<Option<packed::Shape>>,
    /// Bytes `0..mem_start` are in the spill file (as packed records: see [`packed`]); only
    /// the spill thread advances it, after its write has completed.
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
    /// Batches and segments correspond one to one: each append with any bytes adds one of each.
    batches: Vec<(u64, u64)>,
    /// Where the record of each spilled batch starts in the spill file, by batch index: the
    /// first `spilled_at.len()` batches are on disk, the rest in `mem`.
    spilled_at: Vec<u64>,
    /// Bytes of the spill file written so far: where the next record goes.
    spill_end: u64,
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
                shapes: VecDeque::new(),
                mem_start: 0,
                mem_bytes: 0,
                spill: None,
                spill_path,
                spilling: false,
                spill_failed: false,
                batches: Vec::new(),
                spilled_at: Vec::new(),
                spill_end: 0,
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
        let mut writer = EventWriter::new(&mut buf, &mut inner.next_id);
        render(&mut writer);
        let shape = writer.into_shape();
        if !buf.is_empty() {
            let offset = inner.len;
            inner.batches.push((first_id, offset));
            inner.len += buf.len() as u64;
            inner.mem_bytes += buf.len();
            inner.mem.push_back(into_bytes(buf));
            inner.shapes.push_back(shape);
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
    /// cap (at most [`SPILL_WRITE`] bytes) to the file, packed, then drops them from memory.
    /// Returns whether more is left to spill. Blocking; runs only on the spill thread.
    fn spill_step(&self) -> bool {
        let (file, at, segments) = {
            let mut inner = self.lock();
            let (count, _) = inner.spill_plan();
            if count == 0 {
                return self.spill_done(inner, false);
            }
            let inner = &mut *inner;
            let segments: Vec<(Bytes, Option<packed::Shape>)> = inner
                .mem
                .iter()
                .zip(inner.shapes.iter_mut())
                .take(count)
                .map(|(segment, shape)| (segment.clone(), shape.take()))
                .collect();
            (inner.spill.clone(), inner.spill_end, segments)
        };
        let file = match file {
            Some(f) => f,
            None => match self.create_spill() {
                Some(f) => f,
                None => return self.spill_done(self.lock(), true),
            },
        };
        // Output packs to about half its SSE size; a raw batch grows the buffer.
        let size: usize = segments.iter().map(|(s, _)| s.len()).sum();
        let mut records = buffer(size / 2 + size / 8 + 1024);
        let mut starts = Vec::with_capacity(segments.len());
        for (segment, shape) in &segments {
            starts.push(at + records.len() as u64);
            packed::pack(segment, shape.as_ref(), &mut records);
        }
        let end = at + records.len() as u64;
        let written = file.write_all_at(&records, at);
        drop(into_bytes(records));
        if let Err(e) = written {
            tracing::warn!(error = %e, "journal spill write failed; keeping it in memory");
            return self.spill_done(self.lock(), true);
        }
        let mut inner = self.lock();
        // Appends only push at the back and only this thread pops, so the front segments are
        // still the ones just written.
        for _ in &segments {
            if let Some(segment) = inner.mem.pop_front() {
                inner.shapes.pop_front();
                inner.mem_start += segment.len() as u64;
                inner.mem_bytes -= segment.len();
            }
        }
        inner.spilled_at.extend(starts);
        inner.spill_end = end;
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
            batch: inner.spilled_batches(i, i + 1),
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

    /// Spilled batches `i..j` as a [`SpillRead`] from the start of batch `i`.
    fn spilled_batches(&self, i: usize, j: usize) -> SpillRead {
        let end = match j < self.spilled_at.len() {
            true => (self.batches[j].1, self.spilled_at[j]),
            false => (self.mem_start, self.spill_end),
        };
        SpillRead {
            pos: self.batches[i].1,
            batches: (i..j)
                .map(|k| (self.batches[k].0, self.batches[k].1, self.spilled_at[k]))
                .collect(),
            end,
        }
    }

    /// What to read from the spill file for a cursor at `pos` (which has spilled): the batch
    /// holding it, and those after it while the bytes from `pos` stay under [`SPILL_READ`].
    fn spilled_read(&self, pos: u64) -> SpillRead {
        let spilled = self.spilled_at.len();
        let i = self.batches[..spilled].partition_point(|&(_, offset)| offset <= pos) - 1;
        let end_of = |k: usize| self.batches.get(k + 1).map_or(self.len, |&(_, offset)| offset);
        let mut j = i + 1;
        while j < spilled && end_of(j) - pos <= SPILL_READ as u64 {
            j += 1;
        }
        SpillRead {
            pos,
            ..self.spilled_batches(i, j)
        }
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

/// A run of spilled batches to read back, found under the journal's lock and read off it.
struct SpillRead {
    /// Where the reader is: inside the first batch.
    pos: u64,
    /// `(first event id, byte offset, record offset)` of each batch, in order.
    batches: Vec<(u64, u64, u64)>,
    /// `(byte offset, record offset)` where the last batch ends.
    end: (u64, u64),
}

impl SpillRead {
    /// Reads the records and unpacks them: the journal's bytes from `pos` to the end of the
    /// last batch. Blocking.
    fn read(&self, file: &File) -> io::Result<Bytes> {
        let (Some(&(_, start, from)), (end, to)) = (self.batches.first(), self.end) else {
            return Ok(Bytes::new());
        };
        let mut records = read_buffer((to - from) as usize);
        file.read_exact_at(&mut records, from)?;
        let mut out = buffer((end - start) as usize);
        let unpacked = self.batches.iter().enumerate().try_for_each(|(k, &(id, _, at))| {
            let next = self.batches.get(k + 1).map_or(to, |b| b.2);
            packed::unpack(
                &records[(at - from) as usize..(next - from) as usize],
                id,
                &mut out,
            )
        });
        drop(into_bytes(records));
        unpacked?;
        if out.len() as u64 != end - start {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "journal spill records do not match their batches",
            ));
        }
        Ok(into_bytes(out).slice((self.pos - start) as usize..))
    }
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
    /// The batch, from its start.
    batch: SpillRead,
    /// Events of the batch to skip.
    skip: u64,
}

enum Next {
    Live(Bytes),
    Spilled(Arc<File>, SpillRead),
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
        let skipped = tokio::task::spawn_blocking(move || {
            let bytes = seek.batch.read(&file)?;
            Ok::<_, io::Error>(skip_events(&bytes, seek.skip))
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
                    match &inner.spill {
                        Some(f) => Next::Spilled(Arc::clone(f), inner.spilled_read(self.pos)),
                        None => Next::End,
                    }
                }
            };
            match next {
                Next::Live(bytes) => {
                    self.pos += bytes.len() as u64;
                    return Some(Ok(bytes));
                }
                Next::Spilled(file, read) => {
                    let read = tokio::task::spawn_blocking(move || read.read(&file))
                        .await
                        .unwrap_or_else(|e| Err(io::Error::other(e)));
                    return Some(read.inspect(|bytes| self.pos += bytes.len() as u64));
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

/// A buffer of exactly `len` bytes to read into, recycled when large. A spare still holds the
/// bytes it last carried (nothing clears it on its way back), so only growth past them is
/// zero-filled: reads of spilled bytes then cost no pass over memory before the copy itself.
fn read_buffer(len: usize) -> Vec<u8> {
    let mut buf = match len >= RECYCLE_MIN {
        true => spare().pop().unwrap_or_default(),
        false => Vec::new(),
    };
    buf.resize(len, 0);
    buf
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

#[cfg(test)]
mod tests {
    use super::*;

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

    /// One batch of a mixed journal: raw events now and then, else output lines of both
    /// streams with quotes, escapes, invalid UTF-8 and blank lines, timestamps changing.
    fn mixed_batch(w: &mut EventWriter<'_>, b: u64) {
        if b.is_multiple_of(9) {
            w.event(&StreamEvent::init(&format!("batch {b}"), b as i64));
            return;
        }
        for i in 0..40u64 {
            let kind = if (b + i).is_multiple_of(5) {
                OutputKind::Stderr
            } else {
                OutputKind::Stdout
            };
            let mut line =
                format!("{b}:{i} \"q\" \\ {}", "x".repeat(((b * 7 + i) % 150) as usize)).into_bytes();
            match i % 13 {
                0 => line.clear(),
                1 => line.extend_from_slice(b"\xff\xfe\t\x01"),
                _ => {}
            }
            w.output_line(kind, &line, 1_795_306_908_000 + ((b * 40 + i) / 70) as i64);
        }
    }

    #[tokio::test]
    async fn replay_across_the_spill_boundary_is_byte_exact() {
        let (dir, j) = journal();
        // The same batches rendered once more, apart: the bytes every replay must give.
        let mut expected = Vec::new();
        let mut next = 1;
        for b in 0..400 {
            mixed_batch(&mut EventWriter::new(&mut expected, &mut next), b);
            j.write_bulk(16 << 10, |w| mixed_batch(w, b));
        }
        j.wait_spilled();
        let (spilled, boundary_id, spilled_bytes) = {
            let inner = j.lock();
            let k = inner.spilled_at.len();
            (k, inner.batches[k].0, inner.mem_start)
        };
        assert!(spilled > 100, "most batches spilled ({spilled})");
        let file = std::fs::metadata(dir.path().join("j.sse")).unwrap().len();
        assert!(
            file * 10 < spilled_bytes * 7,
            "the spill is packed: {file} bytes for {spilled_bytes}"
        );
        j.finish(&StreamEvent::complete(1, 1));
        let mut tail = Vec::new();
        EventWriter::new(&mut tail, &mut next).event(&StreamEvent::complete(1, 1));
        expected.extend_from_slice(&tail);

        // Where each event starts (event data never holds a blank line).
        let mut starts = vec![0];
        starts.extend(memchr::memmem::find_iter(&expected, b"\n\n").map(|i| i + 2));
        let last = next - 1;
        assert_eq!(starts.len() as u64, last + 1);
        assert!(drain(j.cursor(None)).await == expected, "full replay");
        let mut afters: Vec<u64> = (boundary_id - 3..=boundary_id + 2).collect();
        afters.extend([1, 2, 39, 40, 41, 500, 4321, last - 1, last]);
        for after in afters {
            let got = drain(j.cursor(Some(after))).await;
            assert!(
                got[..] == expected[starts[after as usize]..],
                "after {after}: {} bytes, want {}",
                got.len(),
                expected.len() - starts[after as usize]
            );
        }
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

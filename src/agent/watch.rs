//! File watches (beyond the contract): inotify through the `notify` crate, coalesced within a
//! short window, kept as a bounded, id-numbered history so that a client reconnecting with
//! `Last-Event-ID` gets exactly the events it missed.
//!
//! One [`Watch`] exists per (path, recursive) pair and is shared by all its subscribers. It
//! outlives its last subscriber by a linger period so that a reconnect can resume; a sweeper
//! thread drops it after that. Event ids start from the creation time in microseconds, so ids
//! from an older watch (or an older execd) are always below a new watch's ids and a resume from
//! them is reported as an `overflow` event, never silently. Kernel queue overflow is reported
//! the same way.
//!
//! The notify thread and a coalescing thread per watch are synchronous; [`Subscription`] is the
//! async reader. No axum.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use notify::event::{CreateKind, EventKind, ModifyKind, RemoveKind, RenameMode};
use notify::Watcher as _;

use crate::agent::now_ms;
use crate::wire::files::{WatchEvent, WatchEventType};

/// Events that arrive within this window of the first pending one are merged and sent together.
pub const COALESCE: Duration = Duration::from_millis(50);

/// Why a watch could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The path does not exist.
    #[error("no such file or directory: {}", .0.display())]
    NotFound(PathBuf),
    /// inotify refused (permissions, or out of watches: `fs.inotify.max_user_watches`).
    #[error("cannot watch {}: {source}", path.display())]
    Notify {
        /// The watched path.
        path: PathBuf,
        /// What notify said.
        source: notify::Error,
    },
}

/// All live watches.
pub struct Watches {
    /// Watches by (path, recursive); locked briefly to find or insert, never across `.await`.
    by_key: Mutex<HashMap<(PathBuf, bool), Arc<Watch>>>,
    /// Events each watch keeps for resuming readers.
    history: usize,
    /// How long a watch without subscribers stays alive for reconnects.
    linger: Duration,
}

impl Watches {
    /// Creates the registry and its sweeper thread (which ends when the registry is dropped).
    pub fn new(history: usize, linger: Duration) -> Arc<Self> {
        let watches = Arc::new(Self {
            by_key: Mutex::new(HashMap::new()),
            history: history.max(1),
            linger,
        });
        let weak = Arc::downgrade(&watches);
        let every = (linger / 2).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let spawned = std::thread::Builder::new()
            .name("execd-watch-sweep".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                let Some(watches) = weak.upgrade() else { return };
                watches.sweep();
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the watch sweeper; idle watches stay until reused");
        }
        watches
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<(PathBuf, bool), Arc<Watch>>> {
        // The map holds only Arcs; a panic mid-insert cannot leave it inconsistent.
        self.by_key.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops watches that have had no subscriber for longer than the linger period.
    fn sweep(&self) {
        let now = Instant::now();
        self.lock().retain(|_, w| {
            w.subscribers.load(Ordering::SeqCst) > 0 || now.duration_since(w.idle_since()) < self.linger
        });
    }

    /// Subscribes to changes under `path` (which must exist), resuming after event `after` when
    /// given. Blocking: adding inotify watches walks the tree.
    pub fn subscribe(
        &self,
        path: PathBuf,
        recursive: bool,
        after: Option<u64>,
    ) -> Result<Subscription, WatchError> {
        if std::fs::symlink_metadata(&path).is_err() {
            return Err(WatchError::NotFound(path));
        }
        let key = (path.clone(), recursive);
        let existing = self.lock().get(&key).cloned();
        let watch = match existing {
            Some(w) => w,
            None => {
                // Set up outside the lock; if another request raced us, keep theirs.
                let fresh = Watch::start(path, recursive, self.history)?;
                Arc::clone(self.lock().entry(key).or_insert(fresh))
            }
        };
        watch.subscribers.fetch_add(1, Ordering::SeqCst);
        let changed = watch.shared.changed.subscribe();
        let last = after.unwrap_or_else(|| watch.shared.lock().next_id - 1);
        Ok(Subscription { watch, last, changed })
    }
}

/// One inotify watch, its coalescer and its history.
pub struct Watch {
    root: PathBuf,
    shared: Arc<Shared>,
    /// Dropping the watcher stops notify's thread, which closes the coalescer's channel.
    _watcher: notify::RecommendedWatcher,
    subscribers: AtomicUsize,
    /// When the last subscriber left (creation time until then).
    idle_since: Mutex<Instant>,
}

/// What the coalescer writes and subscribers read.
struct Shared {
    /// The history; locked briefly by the coalescer and by readers, never across `.await`.
    state: Mutex<History>,
    /// Bumped after every batch of events; subscribers wait on it.
    changed: tokio::sync::watch::Sender<u64>,
}

struct History {
    /// `(id, rendered SSE frame)`, oldest first, at most `cap`.
    events: VecDeque<(u64, Bytes)>,
    cap: usize,
    /// Id of the next event.
    next_id: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, History> {
        // Appends are whole frames; a poisoned lock still holds consistent data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, events: impl IntoIterator<Item = WatchEvent>) {
        let mut h = self.lock();
        let mut any = false;
        for e in events {
            let id = h.next_id;
            h.next_id += 1;
            let json = serde_json::to_string(&e).unwrap_or_default();
            h.events
                .push_back((id, Bytes::from(format!("id: {id}\ndata: {json}\n\n"))));
            if h.events.len() > h.cap {
                h.events.pop_front();
            }
            any = true;
        }
        drop(h);
        if any {
            self.changed.send_modify(|v| *v += 1);
        }
    }
}

impl Watch {
    fn start(root: PathBuf, recursive: bool, cap: usize) -> Result<Arc<Self>, WatchError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(History {
                events: VecDeque::new(),
                cap,
                next_id: first_id(),
            }),
            changed: tokio::sync::watch::Sender::new(0),
        });
        let (tx, rx) = mpsc::channel::<notify::Result<notify::Event>>();
        let mut watcher = notify::recommended_watcher(move |e| {
            let _ = tx.send(e);
        })
        .map_err(|source| WatchError::Notify {
            path: root.clone(),
            source,
        })?;
        let mode = if recursive {
            notify::RecursiveMode::Recursive
        } else {
            notify::RecursiveMode::NonRecursive
        };
        watcher.watch(&root, mode).map_err(|source| WatchError::Notify {
            path: root.clone(),
            source,
        })?;
        let coalescer_shared = Arc::clone(&shared);
        let coalescer_root = root.clone();
        std::thread::Builder::new()
            .name("execd-watch".into())
            .spawn(move || coalesce(&coalescer_root, &rx, &coalescer_shared))
            .map_err(|e| WatchError::Notify {
                path: root.clone(),
                source: notify::Error::io(e),
            })?;
        Ok(Arc::new(Self {
            root,
            shared,
            _watcher: watcher,
            subscribers: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }))
    }

    fn idle_since(&self) -> Instant {
        *self.idle_since.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Ids start at the creation time in microseconds: below 2^53, so JavaScript clients keep them
/// exact, and above every id of an earlier watch.
fn first_id() -> u64 {
    static LAST: Mutex<u64> = Mutex::new(0);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    let now = (now_ms().max(0) as u64) * 1000;
    // Strictly increasing, so a newer watch never starts below an older one.
    *last = now.max(*last + 1);
    *last
}

/// A pending event and whether it came from half of a rename (which a later `Both` replaces).
struct Pending {
    event: WatchEvent,
    from_rename: bool,
}

/// Reads raw notify events, merges those that arrive within [`COALESCE`], and publishes them.
/// Ends when the watcher is dropped.
fn coalesce(root: &Path, rx: &mpsc::Receiver<notify::Result<notify::Event>>, shared: &Shared) {
    let mut pending: Vec<Option<Pending>> = Vec::new();
    let mut deadline: Option<Instant> = None;
    loop {
        let received = match deadline {
            Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(Ok(event)) => {
                for p in translate(root, event) {
                    merge(&mut pending, p);
                }
                if deadline.is_none() && !pending.is_empty() {
                    deadline = Some(Instant::now() + COALESCE);
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(path = %root.display(), error = %e, "watch error; reporting overflow");
                merge(
                    &mut pending,
                    Pending {
                        event: overflow(root),
                        from_rename: false,
                    },
                );
                deadline.get_or_insert_with(|| Instant::now() + COALESCE);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                shared.publish(pending.drain(..).flatten().map(|p| p.event));
                deadline = None;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn overflow(root: &Path) -> WatchEvent {
    WatchEvent {
        kind: WatchEventType::Overflow,
        path: root.to_string_lossy().into_owned(),
        old_path: None,
        is_dir: true,
        timestamp: now_ms(),
    }
}

/// Our events for one notify event.
fn translate(root: &Path, event: notify::Event) -> Vec<Pending> {
    let ts = now_ms();
    let mk = |kind, path: &Path, is_dir: bool, from_rename| Pending {
        event: WatchEvent {
            kind,
            path: path.to_string_lossy().into_owned(),
            old_path: None,
            is_dir,
            timestamp: ts,
        },
        from_rename,
    };
    let is_dir_now = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    if event.need_rescan() {
        return vec![Pending {
            event: overflow(root),
            from_rename: false,
        }];
    }
    let Some(path) = event.paths.first() else {
        return Vec::new();
    };
    match event.kind {
        EventKind::Create(k) => vec![mk(
            WatchEventType::Created,
            path,
            k == CreateKind::Folder || is_dir_now(path),
            false,
        )],
        EventKind::Remove(k) => vec![mk(WatchEventType::Deleted, path, k == RemoveKind::Folder, false)],
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
            vec![mk(WatchEventType::Deleted, path, false, true)]
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
            vec![mk(WatchEventType::Created, path, is_dir_now(path), true)]
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            let Some(to) = event.paths.get(1) else {
                return Vec::new();
            };
            let mut p = mk(WatchEventType::Renamed, to, is_dir_now(to), false);
            p.event.old_path = Some(path.to_string_lossy().into_owned());
            vec![p]
        }
        EventKind::Modify(_) => {
            // The watched root itself changing metadata is noise for a directory watch.
            if path == root && is_dir_now(path) {
                return Vec::new();
            }
            vec![mk(WatchEventType::Modified, path, is_dir_now(path), false)]
        }
        EventKind::Access(_) | EventKind::Any | EventKind::Other => Vec::new(),
    }
}

/// Adds `new` to the pending events, merging it with an earlier pending event for the same path.
fn merge(pending: &mut Vec<Option<Pending>>, new: Pending) {
    use WatchEventType::*;
    if new.event.kind == Renamed {
        // A completed rename replaces its two halves.
        let (from, to) = (
            new.event.old_path.clone().unwrap_or_default(),
            new.event.path.clone(),
        );
        for slot in pending.iter_mut() {
            if slot
                .as_ref()
                .is_some_and(|p| p.from_rename && (p.event.path == from || p.event.path == to))
            {
                *slot = None;
            }
        }
        pending.push(Some(new));
        return;
    }
    let same = pending
        .iter_mut()
        .rev()
        .flatten()
        .find(|p| p.event.path == new.event.path && p.event.kind != Renamed && p.event.kind != Overflow);
    let Some(old) = same else {
        pending.push(Some(new));
        return;
    };
    let merged = match (old.event.kind, new.event.kind) {
        (a, b) if a == b => Some(a),
        (Created, Modified) => Some(Created),
        (Modified, Deleted) => Some(Deleted),
        (Deleted, Created) | (Deleted, Modified) => Some(Modified),
        (Created, Deleted) => None,
        _ => {
            pending.push(Some(new));
            return;
        }
    };
    match merged {
        Some(kind) => {
            old.event.kind = kind;
            old.event.is_dir |= new.event.is_dir;
            old.from_rename &= new.from_rename;
        }
        None => {
            // Created and deleted within the window: nothing to report.
            pending.retain(|s| {
                s.as_ref()
                    .is_none_or(|p| p.event.path != new.event.path || p.event.kind == Renamed)
            });
        }
    }
}

/// One client's view of a watch: yields SSE frames after its last id.
pub struct Subscription {
    watch: Arc<Watch>,
    /// Id of the last event handed out.
    last: u64,
    changed: tokio::sync::watch::Receiver<u64>,
}

impl Subscription {
    /// Waits for events after the last one handed out and returns them as SSE bytes. If some
    /// were lost (resume from before the history, or a reader that fell too far behind), an
    /// `overflow` event (without an id) comes first. Returns `None` after `idle` with nothing
    /// new, so the caller can send a keep-alive.
    pub async fn next(&mut self, idle: Duration) -> Option<Bytes> {
        loop {
            self.changed.borrow_and_update();
            if let Some(bytes) = self.take() {
                return Some(bytes);
            }
            match tokio::time::timeout(idle, self.changed.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }

    fn take(&mut self) -> Option<Bytes> {
        let h = self.watch.shared.lock();
        let oldest = h.events.front().map_or(h.next_id, |(id, _)| *id);
        let mut out = Vec::new();
        if self.last + 1 < oldest || self.last >= h.next_id {
            let json = serde_json::to_string(&overflow(&self.watch.root)).unwrap_or_default();
            out.extend_from_slice(format!("data: {json}\n\n").as_bytes());
            self.last = oldest.saturating_sub(1).min(h.next_id - 1);
        }
        let after = self.last;
        for (id, frame) in h.events.iter().filter(|(id, _)| *id > after) {
            out.extend_from_slice(frame);
            self.last = *id;
        }
        (!out.is_empty()).then(|| Bytes::from(out))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.watch.subscribers.fetch_sub(1, Ordering::SeqCst) == 1 {
            *self.watch.idle_since.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: WatchEventType, path: &str, from_rename: bool) -> Pending {
        Pending {
            event: WatchEvent {
                kind,
                path: path.into(),
                old_path: None,
                is_dir: false,
                timestamp: 0,
            },
            from_rename,
        }
    }

    fn kinds(p: &[Option<Pending>]) -> Vec<(WatchEventType, String)> {
        p.iter()
            .flatten()
            .map(|p| (p.event.kind, p.event.path.clone()))
            .collect()
    }

    #[test]
    fn merging() {
        use WatchEventType::*;
        let mut p = Vec::new();
        merge(&mut p, ev(Created, "/a", false));
        merge(&mut p, ev(Modified, "/a", false));
        merge(&mut p, ev(Modified, "/b", false));
        merge(&mut p, ev(Modified, "/b", false));
        assert_eq!(kinds(&p), [(Created, "/a".into()), (Modified, "/b".into())]);
        merge(&mut p, ev(Deleted, "/a", false));
        assert_eq!(
            kinds(&p),
            [(Modified, "/b".into())],
            "created then deleted is nothing"
        );
        merge(&mut p, ev(Deleted, "/c", true));
        merge(&mut p, ev(Created, "/d", true));
        let mut both = ev(Renamed, "/d", false);
        both.event.old_path = Some("/c".into());
        merge(&mut p, both);
        assert_eq!(kinds(&p), [(Modified, "/b".into()), (Renamed, "/d".into())]);
    }

    #[test]
    fn kernel_queue_overflow_becomes_an_event() {
        let root = Path::new("/w");
        let rescan = notify::Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan);
        let out = translate(root, rescan);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].event.kind, out[0].event.path.as_str()),
            (WatchEventType::Overflow, "/w")
        );
        let both = notify::Event::new(EventKind::Modify(ModifyKind::Name(RenameMode::Both)))
            .add_path("/w/a".into())
            .add_path("/w/b".into());
        let out = translate(root, both);
        assert_eq!(out[0].event.kind, WatchEventType::Renamed);
        assert_eq!(out[0].event.old_path.as_deref(), Some("/w/a"));
    }

    #[tokio::test]
    async fn resume_and_overflow() {
        let d = tempfile::tempdir().unwrap();
        let watches = Watches::new(3, Duration::from_secs(60));
        let mut live = watches.subscribe(d.path().to_owned(), true, None).unwrap();
        let base = live.last;
        live.watch
            .shared
            .publish((0..5).map(|i| ev(WatchEventType::Created, &format!("/f{i}"), false).event));
        let got = String::from_utf8(live.next(Duration::from_secs(1)).await.unwrap().to_vec()).unwrap();
        assert!(
            got.starts_with("data: {\"type\":\"overflow\""),
            "fell behind a 3-event history: {got}"
        );
        assert_eq!(got.matches("id: ").count(), 3);
        let mut resumed = watches
            .subscribe(d.path().to_owned(), true, Some(base + 4))
            .unwrap();
        let got = String::from_utf8(resumed.next(Duration::from_secs(1)).await.unwrap().to_vec()).unwrap();
        assert_eq!(
            got.matches("id: ").count(),
            1,
            "only the event after id base+4: {got}"
        );
        assert!(!got.contains("overflow"));
    }
}

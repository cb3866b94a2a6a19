//! The `sandbox_events` table: each sandbox's structured event journal (design §14.2). Rows
//! are numbered by an autoincrement `seq` that never goes back, so a reader resumes after the
//! last `seq` it saw. A journal outlives its sandbox (retention is the service's sweep) and
//! carries its owner, so that it stays readable by the same people after the delete.

use rusqlite::{params, Connection};

use super::{sql, Store, StoreError};

/// Events kept per sandbox; older ones are dropped.
pub const EVENTS_KEPT: i64 = 1000;

/// What happened to a sandbox. The names are the wire's `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// A create was accepted.
    Created,
    /// The container started (the runtime's account).
    Started,
    /// execd answered; a pre-start hook or readiness probe runs now.
    Starting,
    /// The pre-start hook finished.
    PreStartSucceeded,
    /// The pre-start hook failed.
    PreStartFailed,
    /// The sandbox is ready: execd answered, hook and probe passed.
    Ready,
    /// The readiness probe gave up.
    ProbeFailed,
    /// The startup was interrupted (sandboxd restarted during it).
    StartupFailed,
    /// Frozen.
    Paused,
    /// A freeze or thaw the runtime kept refusing.
    PauseFailed,
    /// Thawed.
    Resumed,
    /// The expiry moved.
    Renewed,
    /// The metadata changed.
    MetadataUpdated,
    /// Its time ran out; it is being removed.
    Expired,
    /// The container ended (with `exit_code`).
    Exited,
    /// The kernel's OOM killer struck.
    OomKilled,
    /// Something sent the container a signal.
    Killed,
    /// Taken from a warm pool.
    Allocated,
    /// Given back to its pool.
    Released,
    /// A snapshot of it is Ready (the message names it).
    SnapshotTaken,
    /// A snapshot of it failed (the message says why).
    SnapshotFailed,
    /// Sandboxes were forked from it.
    Forked,
    /// Deleted: the journal is kept for the retention period after this.
    Deleted,
    /// A line of the event log of a sandboxd older than the journal.
    Note,
}

impl EventType {
    /// The wire's name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Created => "Created",
            EventType::Started => "Started",
            EventType::Starting => "Starting",
            EventType::PreStartSucceeded => "PreStartSucceeded",
            EventType::PreStartFailed => "PreStartFailed",
            EventType::Ready => "Ready",
            EventType::ProbeFailed => "ProbeFailed",
            EventType::StartupFailed => "StartupFailed",
            EventType::Paused => "Paused",
            EventType::PauseFailed => "PauseFailed",
            EventType::Resumed => "Resumed",
            EventType::Renewed => "Renewed",
            EventType::MetadataUpdated => "MetadataUpdated",
            EventType::Expired => "Expired",
            EventType::Exited => "Exited",
            EventType::OomKilled => "OOMKilled",
            EventType::Killed => "Killed",
            EventType::Allocated => "Allocated",
            EventType::Released => "Released",
            EventType::SnapshotTaken => "SnapshotTaken",
            EventType::SnapshotFailed => "SnapshotFailed",
            EventType::Forked => "Forked",
            EventType::Deleted => "Deleted",
            EventType::Note => "Note",
        }
    }
}

/// Who reported an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// sandboxd itself.
    Sandboxd,
    /// The Docker engine's event stream.
    Docker,
    /// The Kubernetes runtime's watch of its pods.
    Kubernetes,
}

impl Source {
    /// The wire's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Sandboxd => "sandboxd",
            Source::Docker => "docker",
            Source::Kubernetes => "kubernetes",
        }
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// When, epoch ms.
    pub at: i64,
    /// What happened.
    pub kind: EventType,
    /// A short machine-readable why (`PRE_START_FAILED`, `Error`), if any.
    pub reason: Option<String>,
    /// For people.
    pub message: String,
    /// Who reported it.
    pub source: Source,
    /// The exit code, on [`EventType::Exited`].
    pub exit_code: Option<i64>,
    /// The `X-Request-ID` of the request that caused it, if any.
    pub request_id: Option<String>,
}

/// One event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Its place in the journal (grows across all sandboxes).
    pub seq: i64,
    /// When, epoch ms.
    pub at: i64,
    /// [`EventType::as_str`] of the build that wrote it.
    pub kind: String,
    /// A short machine-readable why.
    pub reason: Option<String>,
    /// For people.
    pub message: String,
    /// [`Source::as_str`] of the build that wrote it.
    pub source: String,
    /// The exit code of an `Exited` event.
    pub exit_code: Option<i64>,
    /// The request that caused it.
    pub request_id: Option<String>,
}

impl Store {
    /// Appends to sandbox `id`'s journal, keeping the last [`EVENTS_KEPT`]; returns the new
    /// event's `seq`. The owner is the sandbox's, or (once it is deleted) the journal's.
    pub async fn append_event(&self, id: &str, event: NewEvent) -> Result<i64, StoreError> {
        let id = id.to_owned();
        self.call(move |c| append(c, &id, &event).map_err(sql("record an event")))
            .await
    }

    /// Up to `limit` events of sandbox `id` after `after` (a `seq`), oldest first.
    pub async fn events_after(&self, id: &str, after: i64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let id = id.to_owned();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.call(move |c| {
            let mut stmt = c
                .prepare(
                    "SELECT seq, at, type, reason, message, source, exit_code, request_id FROM sandbox_events
                     WHERE sandbox_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
                )
                .map_err(sql("read events"))?;
            let rows = stmt
                .query_map(params![id, after, limit], |r| {
                    Ok(Event {
                        seq: r.get(0)?,
                        at: r.get(1)?,
                        kind: r.get(2)?,
                        reason: r.get(3)?,
                        message: r.get(4)?,
                        source: r.get(5)?,
                        exit_code: r.get(6)?,
                        request_id: r.get(7)?,
                    })
                })
                .map_err(sql("read events"))?;
            rows.collect::<rusqlite::Result<_>>().map_err(sql("read events"))
        })
        .await
    }

    /// Every kept event of sandbox `id`, oldest first.
    pub async fn events(&self, id: &str) -> Result<Vec<Event>, StoreError> {
        self.events_after(id, 0, usize::MAX).await
    }

    /// The owner of sandbox `id`'s journal (`None`: no journal, or one from before owners).
    pub async fn journal_owner(&self, id: &str) -> Result<Option<String>, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            use rusqlite::OptionalExtension as _;
            c.query_row(
                "SELECT owner FROM sandbox_events WHERE sandbox_id = ?1 AND owner IS NOT NULL
                 ORDER BY seq DESC LIMIT 1",
                [&id],
                |r| r.get(0),
            )
            .optional()
            .map_err(sql("read a journal's owner"))
        })
        .await
    }

    /// Drops the journals of sandboxes that no longer exist and whose last event is older
    /// than `before` (epoch ms). Returns how many events went.
    pub async fn sweep_events(&self, before: i64) -> Result<usize, StoreError> {
        self.call(move |c| {
            c.execute(
                "DELETE FROM sandbox_events WHERE sandbox_id IN (
                    SELECT sandbox_id FROM sandbox_events
                    WHERE sandbox_id NOT IN (SELECT id FROM sandboxes)
                    GROUP BY sandbox_id HAVING MAX(at) < ?1)",
                [before],
            )
            .map_err(sql("sweep old journals"))
        })
        .await
    }
}

fn append(c: &Connection, id: &str, e: &NewEvent) -> rusqlite::Result<i64> {
    c.execute(
        "INSERT INTO sandbox_events (sandbox_id, owner, at, type, reason, message, source, exit_code, request_id)
         VALUES (?1, COALESCE((SELECT owner FROM sandboxes WHERE id = ?1),
                              (SELECT owner FROM sandbox_events WHERE sandbox_id = ?1 AND owner IS NOT NULL
                               ORDER BY seq DESC LIMIT 1)),
                 ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            id,
            e.at,
            e.kind.as_str(),
            e.reason,
            e.message,
            e.source.as_str(),
            e.exit_code,
            e.request_id
        ],
    )?;
    let seq = c.last_insert_rowid();
    c.execute(
        "DELETE FROM sandbox_events WHERE sandbox_id = ?1 AND seq IN
         (SELECT seq FROM sandbox_events WHERE sandbox_id = ?1 ORDER BY seq DESC LIMIT -1 OFFSET ?2)",
        params![id, EVENTS_KEPT],
    )?;
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(at: i64, kind: EventType, message: &str) -> NewEvent {
        NewEvent {
            at,
            kind,
            reason: None,
            message: message.into(),
            source: Source::Sandboxd,
            exit_code: None,
            request_id: None,
        }
    }

    #[tokio::test]
    async fn the_journal_is_numbered_bounded_and_resumable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut seqs = Vec::new();
        for i in 0..EVENTS_KEPT + 10 {
            seqs.push(
                store
                    .append_event("a", note(i, EventType::Note, &format!("e{i}")))
                    .await
                    .unwrap(),
            );
            if i == 3 {
                store
                    .append_event("b", note(i, EventType::Created, "other"))
                    .await
                    .unwrap();
            }
        }
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        let events = store.events("a").await.unwrap();
        assert_eq!(events.len() as i64, EVENTS_KEPT);
        assert_eq!(events[0].message, "e10");
        assert_eq!(events.last().unwrap().message, format!("e{}", EVENTS_KEPT + 9));
        let after = store.events_after("a", seqs[seqs.len() - 3], 100).await.unwrap();
        assert_eq!(after.len(), 2);
        let page = store.events_after("a", 0, 5).await.unwrap();
        assert_eq!(page.len(), 5);
        assert_eq!(
            store.events("b").await.unwrap().len(),
            1,
            "the other journal is untouched"
        );
    }

    #[tokio::test]
    async fn a_journal_keeps_its_owner_after_the_sandbox_and_is_swept_after_retention() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .call(|c| {
                c.execute(
                    "INSERT INTO sandboxes (id, image, entrypoint, metadata, extensions, token, created_at,
                        phase, transition_at, owner) VALUES ('s1', 'i', '[]', '{}', '{}', 't', 1, 'ready', 1, 'alice')",
                    [],
                )
                .map_err(sql("insert"))
            })
            .await
            .unwrap();
        store
            .append_event("s1", note(100, EventType::Created, "made"))
            .await
            .unwrap();
        assert!(store.remove("s1").await.unwrap());
        store
            .append_event("s1", note(200, EventType::Deleted, "gone"))
            .await
            .unwrap();
        assert_eq!(store.journal_owner("s1").await.unwrap().as_deref(), Some("alice"));
        assert_eq!(store.events("s1").await.unwrap().len(), 2, "kept past the delete");
        store
            .append_event(
                "live",
                note(1, EventType::Note, "a journal whose sandbox never was"),
            )
            .await
            .unwrap();
        assert_eq!(
            store.sweep_events(200).await.unwrap(),
            1,
            "only the journal whose last event is old enough"
        );
        assert_eq!(store.sweep_events(201).await.unwrap(), 2);
        assert!(store.events("s1").await.unwrap().is_empty());
        assert_eq!(store.journal_owner("s1").await.unwrap(), None);
    }
}

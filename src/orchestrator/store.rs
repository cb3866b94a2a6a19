//! The state file: one SQLite database (WAL) holding every sandbox sandboxd owns, its access
//! token and expiry, and a short event log per sandbox for the diagnostics route.
//!
//! Synchronous and small: each call is one short statement on a local file (tens of
//! microseconds), made under a mutex from async code, the way an in-memory map would be.
//! Durable enough to survive a restart of sandboxd; the Docker engine stays the truth about
//! containers, and startup reconciles the two (`sandboxes::Service::reconcile`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::wire::lifecycle::PlatformSpec;

/// What sandboxd itself last did to a sandbox; the live state comes from Docker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Being created: container not yet answering.
    Pending,
    /// Created and answered `/ping`; Docker's state is the truth from here on.
    Ready,
    /// Paused by sandboxd (or seen paused by the engine on the last read). Kept so that the
    /// server proxy can refuse a frozen sandbox without asking the engine on every request;
    /// a frozen container accepts connections and never answers them.
    Paused,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Ready => "ready",
            Phase::Paused => "paused",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "ready" => Phase::Ready,
            "paused" => Phase::Paused,
            _ => Phase::Pending,
        }
    }
}

/// One sandbox.
#[derive(Debug, Clone)]
pub struct Record {
    /// UUID, also in the container's `opensandbox.io/id` label.
    pub id: String,
    /// Docker container id, once created.
    pub container: Option<String>,
    /// Image reference.
    pub image: String,
    /// Entrypoint as requested.
    pub entrypoint: Vec<String>,
    /// User labels.
    pub metadata: BTreeMap<String, String>,
    /// Extensions as requested.
    pub extensions: BTreeMap<String, String>,
    /// Requested platform.
    pub platform: Option<PlatformSpec>,
    /// The sandbox's execd access token.
    pub token: String,
    /// Creation time, epoch ms.
    pub created_at: i64,
    /// Expiry, epoch ms; `None` for manual cleanup.
    pub expires_at: Option<i64>,
    /// Host port published for execd (44772).
    pub execd_port: Option<u16>,
    /// Host port published for 8080.
    pub http_port: Option<u16>,
    /// What sandboxd last did.
    pub phase: Phase,
    /// When `phase` last changed, epoch ms.
    pub transition_at: i64,
}

/// The database.
pub struct Store {
    conn: Mutex<Connection>,
    /// This state file's identity, labelled on every container it owns, so that several
    /// sandboxd instances can share one Docker engine without touching each other's sandboxes.
    pub instance: String,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sandboxes (
    id TEXT PRIMARY KEY,
    container TEXT,
    image TEXT NOT NULL,
    entrypoint TEXT NOT NULL,
    metadata TEXT NOT NULL,
    extensions TEXT NOT NULL,
    platform TEXT,
    token TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    execd_port INTEGER,
    http_port INTEGER,
    phase TEXT NOT NULL,
    transition_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sandboxes_expiry ON sandboxes (expires_at);
CREATE TABLE IF NOT EXISTS events (
    sandbox_id TEXT NOT NULL,
    at INTEGER NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_sandbox ON events (sandbox_id, at);
";

/// Events kept per sandbox; older ones are dropped.
const EVENTS_KEPT: i64 = 200;

const COLUMNS: &str = "id, container, image, entrypoint, metadata, extensions, platform, token, \
     created_at, expires_at, execd_port, http_port, phase, transition_at";

impl Store {
    /// Opens (creating when missing) `sandboxd.db` in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join("sandboxd.db");
        let conn = Connection::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        let instance: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| r.get(0))
            .optional()?;
        let instance = match instance {
            Some(id) => id,
            None => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                conn.execute("INSERT INTO meta (key, value) VALUES ('instance', ?1)", [&id])?;
                id
            }
        };
        Ok(Self {
            conn: Mutex::new(conn),
            instance,
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> anyhow::Result<T> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        Ok(f(&conn)?)
    }

    /// Adds a new sandbox.
    pub fn insert(&self, r: &Record) -> anyhow::Result<()> {
        self.with(|c| {
            c.execute(
                &format!("INSERT INTO sandboxes ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"),
                params![
                    r.id,
                    r.container,
                    r.image,
                    json(&r.entrypoint),
                    json(&r.metadata),
                    json(&r.extensions),
                    r.platform.as_ref().map(json),
                    r.token,
                    r.created_at,
                    r.expires_at,
                    r.execd_port,
                    r.http_port,
                    r.phase.as_str(),
                    r.transition_at,
                ],
            )
            .map(drop)
        })
    }

    /// Writes back every mutable column of `r`. Returns false when the sandbox is gone.
    pub fn update(&self, r: &Record) -> anyhow::Result<bool> {
        self.with(|c| {
            c.execute(
                "UPDATE sandboxes SET container = ?2, metadata = ?3, expires_at = ?4, execd_port = ?5,
                 http_port = ?6, phase = ?7, transition_at = ?8 WHERE id = ?1",
                params![
                    r.id,
                    r.container,
                    json(&r.metadata),
                    r.expires_at,
                    r.execd_port,
                    r.http_port,
                    r.phase.as_str(),
                    r.transition_at
                ],
            )
            .map(|n| n == 1)
        })
    }

    /// One sandbox.
    pub fn get(&self, id: &str) -> anyhow::Result<Option<Record>> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {COLUMNS} FROM sandboxes WHERE id = ?1"),
                [id],
                record,
            )
            .optional()
        })
    }

    /// Every sandbox, newest first.
    pub fn all(&self) -> anyhow::Result<Vec<Record>> {
        self.with(|c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {COLUMNS} FROM sandboxes ORDER BY created_at DESC, id"
            ))?;
            let rows = stmt.query_map([], record)?;
            rows.collect()
        })
    }

    /// Forgets a sandbox and its events. Returns false when it was not there.
    pub fn remove(&self, id: &str) -> anyhow::Result<bool> {
        self.with(|c| {
            c.execute("DELETE FROM events WHERE sandbox_id = ?1", [id])?;
            c.execute("DELETE FROM sandboxes WHERE id = ?1", [id])
                .map(|n| n == 1)
        })
    }

    /// The earliest expiry among all sandboxes, epoch ms.
    pub fn next_expiry(&self) -> anyhow::Result<Option<i64>> {
        self.with(|c| c.query_row("SELECT MIN(expires_at) FROM sandboxes", [], |r| r.get(0)))
    }

    /// Ids of sandboxes whose expiry is at or before `now`.
    pub fn expired(&self, now: i64) -> anyhow::Result<Vec<String>> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT id FROM sandboxes WHERE expires_at <= ?1")?;
            let rows = stmt.query_map([now], |r| r.get(0))?;
            rows.collect()
        })
    }

    /// Appends to a sandbox's event log (keeping the last [`EVENTS_KEPT`]).
    pub fn event(&self, id: &str, at: i64, message: &str) -> anyhow::Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO events (sandbox_id, at, message) VALUES (?1, ?2, ?3)",
                params![id, at, message],
            )?;
            c.execute(
                "DELETE FROM events WHERE sandbox_id = ?1 AND rowid NOT IN
                 (SELECT rowid FROM events WHERE sandbox_id = ?1 ORDER BY at DESC, rowid DESC LIMIT ?2)",
                params![id, EVENTS_KEPT],
            )
            .map(drop)
        })
    }

    /// A sandbox's events, oldest first.
    pub fn events(&self, id: &str) -> anyhow::Result<Vec<(i64, String)>> {
        self.with(|c| {
            let mut stmt =
                c.prepare("SELECT at, message FROM events WHERE sandbox_id = ?1 ORDER BY at, rowid")?;
            let rows = stmt.query_map([id], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

fn from_json<T: serde::de::DeserializeOwned + Default>(text: String) -> T {
    serde_json::from_str(&text).unwrap_or_default()
}

fn record(r: &Row<'_>) -> rusqlite::Result<Record> {
    Ok(Record {
        id: r.get(0)?,
        container: r.get(1)?,
        image: r.get(2)?,
        entrypoint: from_json(r.get(3)?),
        metadata: from_json(r.get(4)?),
        extensions: from_json(r.get(5)?),
        platform: r
            .get::<_, Option<String>>(6)?
            .and_then(|t| serde_json::from_str(&t).ok()),
        token: r.get(7)?,
        created_at: r.get(8)?,
        expires_at: r.get(9)?,
        execd_port: r.get(10)?,
        http_port: r.get(11)?,
        phase: Phase::parse(&r.get::<_, String>(12)?),
        transition_at: r.get(13)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str, created_at: i64, expires_at: Option<i64>) -> Record {
        Record {
            id: id.to_owned(),
            container: None,
            image: "img".into(),
            entrypoint: vec!["sleep".into(), "infinity".into()],
            metadata: BTreeMap::from([("team".into(), "a".into())]),
            extensions: BTreeMap::new(),
            platform: None,
            token: "t".into(),
            created_at,
            expires_at,
            execd_port: None,
            http_port: None,
            phase: Phase::Pending,
            transition_at: created_at,
        }
    }

    #[test]
    fn survives_reopen_and_keeps_its_instance() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let instance = store.instance.clone();
        store.insert(&sample("a", 1, Some(100))).unwrap();
        store.insert(&sample("b", 2, None)).unwrap();
        let mut a = store.get("a").unwrap().unwrap();
        a.phase = Phase::Ready;
        a.execd_port = Some(40000);
        a.metadata.insert("k".into(), "v".into());
        assert!(store.update(&a).unwrap());
        drop(store);

        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.instance, instance);
        let ids: Vec<_> = store.all().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["b", "a"], "newest first");
        let mut a = store.get("a").unwrap().unwrap();
        assert_eq!((a.phase, a.execd_port), (Phase::Ready, Some(40000)));
        a.phase = Phase::Paused;
        assert!(store.update(&a).unwrap());
        let a = store.get("a").unwrap().unwrap();
        assert_eq!(a.phase, Phase::Paused);
        assert_eq!(a.metadata.get("k").map(String::as_str), Some("v"));
        assert_eq!(a.entrypoint, ["sleep", "infinity"]);
        assert_eq!(store.next_expiry().unwrap(), Some(100));
        assert_eq!(store.expired(99).unwrap(), Vec::<String>::new());
        assert_eq!(store.expired(100).unwrap(), ["a"]);
        assert!(store.remove("a").unwrap());
        assert!(!store.remove("a").unwrap());
        assert_eq!(store.next_expiry().unwrap(), None);
    }

    #[test]
    fn event_log_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..(EVENTS_KEPT + 10) {
            store.event("a", i, &format!("e{i}")).unwrap();
        }
        let events = store.events("a").unwrap();
        assert_eq!(events.len() as i64, EVENTS_KEPT);
        assert_eq!(events.last().unwrap().1, format!("e{}", EVENTS_KEPT + 9));
        assert_eq!(events[0].1, "e10");
    }
}

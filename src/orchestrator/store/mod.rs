//! The state file: one SQLite database (WAL) holding every sandbox sandboxd owns, its access
//! token and expiry, and each sandbox's event journal (kept a while after the sandbox).
//!
//! - Versioned: `PRAGMA user_version` numbers the schema; [`MIGRATIONS`] are forward-only,
//!   one transaction each, applied at open. A file newer than this build is refused.
//! - Off the async workers: one `sandboxd-store` thread owns the connection; callers send it
//!   a closure and await the reply. sandboxd is the only writer.
//! - Typed: a row this build cannot read (a phase it does not know, JSON that does not parse)
//!   is a [`StoreError`], never a default, so that nothing acts on a guess.
//! - Private: the directory is made 0700 when sandboxd creates it and the file is 0600,
//!   whatever the umask (it holds every sandbox's execd token).
//!
//! The runtime stays the truth about what runs; start-up reconciliation merges the two
//! (`service::reconcile`).

mod events;
mod executions;
mod pools;
mod prepulls;
mod sandboxes;
mod snapshots;
mod templates;
mod tokens;

use std::path::Path;
use std::sync::mpsc;

use rusqlite::{Connection, OptionalExtension};
use tokio::sync::oneshot;

pub use events::{Event, EventType, NewEvent, Source, EVENTS_KEPT};
pub use executions::{BatchPlace, BatchRow, ExecutionFilter, ExecutionRow};
pub use pools::{MemberRow, MemberState, PoolRow};
pub use prepulls::{PrepullFilter, PrepullRow, PREPULLS_KEPT_MS};
pub use sandboxes::{Failure, Hibernation, Launch, Phase, PoolLink, Record, RowError, TemplateRef};
pub use snapshots::{SnapshotRow, SnapshotSource, SnapshotState};
pub use templates::{ApplyError, TemplateChange, TemplateRow, VersionRow};
pub use tokens::TokenRecord;

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("state store: cannot {op}: {source}")]
    Sqlite {
        /// What was being done.
        op: &'static str,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A row holds a value this build cannot read.
    #[error("state store: {table} row {id}: field {field} is corrupt")]
    Corrupt {
        /// Table.
        table: &'static str,
        /// Row id.
        id: String,
        /// Column.
        field: &'static str,
    },
    /// A row's phase is not one this build knows (a newer sandboxd wrote it, or the row is
    /// damaged). Such a row is left alone.
    #[error("state store: {table} row {id}: unknown phase {value:?}")]
    UnknownPhase {
        /// Table.
        table: &'static str,
        /// Row id.
        id: String,
        /// The stored phase.
        value: String,
    },
    /// The file was written by a newer sandboxd.
    #[error("the state file has schema version {found}, newer than this sandboxd's {supported}; run a newer sandboxd or point --data-dir elsewhere")]
    SchemaTooNew {
        /// The file's version.
        found: i64,
        /// This build's.
        supported: i64,
    },
    /// The state directory or file cannot be prepared.
    #[error("state store: {0}")]
    Io(String),
    /// The store thread is gone (sandboxd is shutting down).
    #[error("state store: closed")]
    Closed,
}

/// `Sqlite{op}` for `?` on rusqlite calls.
fn sql(op: &'static str) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |source| StoreError::Sqlite { op, source }
}

/// The schema, one step per version: `MIGRATIONS[n]` takes version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the schema sandboxd wrote before versions were numbered.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE sandboxes (
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
     CREATE INDEX sandboxes_expiry ON sandboxes (expires_at);
     CREATE TABLE events (sandbox_id TEXT NOT NULL, at INTEGER NOT NULL, message TEXT NOT NULL);
     CREATE INDEX events_sandbox ON events (sandbox_id, at);",
    // 2: runtime-neutral handles. The Docker columns become the Docker runtime's own data.
    "ALTER TABLE sandboxes ADD COLUMN runtime TEXT;
     ALTER TABLE sandboxes ADD COLUMN runtime_ref TEXT;
     ALTER TABLE sandboxes ADD COLUMN runtime_data TEXT;
     UPDATE sandboxes SET runtime = 'docker', runtime_ref = container,
        runtime_data = json_object('execd', execd_port, 'http', http_port)
        WHERE container IS NOT NULL;
     ALTER TABLE sandboxes DROP COLUMN container;
     ALTER TABLE sandboxes DROP COLUMN execd_port;
     ALTER TABLE sandboxes DROP COLUMN http_port;",
    // 3: owners (every sandbox so far was made with the API key: root's), business domains,
    // request ids on events, and the tokens sandboxd minted or revoked.
    "ALTER TABLE sandboxes ADD COLUMN owner TEXT NOT NULL DEFAULT 'root';
     ALTER TABLE sandboxes ADD COLUMN business_domain TEXT;
     CREATE INDEX sandboxes_owner ON sandboxes (owner);
     ALTER TABLE events ADD COLUMN request_id TEXT;
     CREATE TABLE tokens (
        jti TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        role TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        revoked_at INTEGER
     );",
    // 4: templates and their immutable versions, image prepull tasks, and the template a
    // sandbox was made from.
    "CREATE TABLE templates (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        display_name TEXT,
        description TEXT,
        tags TEXT NOT NULL,
        author TEXT NOT NULL,
        is_public INTEGER NOT NULL,
        metadata TEXT NOT NULL,
        publish TEXT NOT NULL,
        owner TEXT NOT NULL,
        latest_version INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
     );
     CREATE TABLE template_versions (
        template_id TEXT NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
        version INTEGER NOT NULL,
        spec TEXT NOT NULL,
        changelog TEXT,
        created_at INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        rolled_back_from INTEGER,
        phase TEXT NOT NULL,
        manifest_ref TEXT,
        message TEXT,
        build_log TEXT,
        PRIMARY KEY (template_id, version)
     );
     CREATE TABLE prepull_tasks (
        id TEXT PRIMARY KEY,
        image TEXT NOT NULL,
        owner TEXT NOT NULL,
        template_id TEXT,
        template_version INTEGER,
        state TEXT NOT NULL,
        reason TEXT,
        message TEXT,
        progress TEXT NOT NULL,
        timeout INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        completed_at INTEGER,
        transition_at INTEGER NOT NULL
     );
     CREATE INDEX prepull_image ON prepull_tasks (image, state);
     ALTER TABLE sandboxes ADD COLUMN template_id TEXT;
     ALTER TABLE sandboxes ADD COLUMN template_name TEXT;
     ALTER TABLE sandboxes ADD COLUMN template_version INTEGER;
     ALTER TABLE sandboxes ADD COLUMN failure TEXT;",
    // 5: what a sandbox was created with, for its view: a display name, the resource limits
    // and environment as given (JSON objects), and the lifetime in seconds.
    "ALTER TABLE sandboxes ADD COLUMN name TEXT;
     ALTER TABLE sandboxes ADD COLUMN resource_limits TEXT NOT NULL DEFAULT '{}';
     ALTER TABLE sandboxes ADD COLUMN timeout INTEGER;
     ALTER TABLE sandboxes ADD COLUMN env TEXT NOT NULL DEFAULT '{}';",
    // 6: warm pools, their members, and the member a pool-backed sandbox runs in.
    "CREATE TABLE pools (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        request TEXT NOT NULL,
        image TEXT NOT NULL,
        capacity TEXT NOT NULL,
        recycle TEXT NOT NULL,
        dedicated_owner INTEGER NOT NULL,
        template_id TEXT,
        template_version INTEGER,
        revision INTEGER NOT NULL,
        created_at INTEGER NOT NULL
     );
     CREATE TABLE pool_members (
        id TEXT PRIMARY KEY,
        pool TEXT NOT NULL,
        state TEXT NOT NULL,
        sandbox_id TEXT,
        runtime TEXT,
        runtime_ref TEXT,
        runtime_data TEXT,
        token TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        ready_at INTEGER
     );
     CREATE INDEX pool_members_idle ON pool_members (pool, state, ready_at);
     ALTER TABLE sandboxes ADD COLUMN pool TEXT;
     ALTER TABLE sandboxes ADD COLUMN pool_member TEXT;",
    // 7: the structured event journal (design §14.2) replaces the event log: numbered,
    // typed, with its source and owner, and kept after the sandbox (for a retention period).
    // The old log's lines become typed events by their wording.
    "CREATE TABLE sandbox_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        sandbox_id TEXT NOT NULL,
        owner TEXT,
        at INTEGER NOT NULL,
        type TEXT NOT NULL,
        reason TEXT,
        message TEXT NOT NULL,
        source TEXT NOT NULL,
        exit_code INTEGER,
        request_id TEXT
     );
     CREATE INDEX sandbox_events_sandbox ON sandbox_events (sandbox_id, seq);
     INSERT INTO sandbox_events (sandbox_id, owner, at, type, message, source, request_id)
        SELECT e.sandbox_id, s.owner, e.at,
            CASE
                WHEN e.message LIKE 'create requested%' THEN 'Created'
                WHEN e.message LIKE 'running%' THEN 'Ready'
                WHEN e.message LIKE 'pending%' THEN 'Starting'
                WHEN e.message LIKE 'paused%' THEN 'Paused'
                WHEN e.message LIKE 'resumed%' THEN 'Resumed'
                WHEN e.message LIKE 'pause failed%' OR e.message LIKE 'resume failed%' THEN 'PauseFailed'
                WHEN e.message LIKE 'expiry renewed%' THEN 'Renewed'
                WHEN e.message LIKE 'metadata updated%' THEN 'MetadataUpdated'
                WHEN e.message LIKE 'preStart finished%' THEN 'PreStartSucceeded'
                WHEN e.message LIKE 'failed (PRE_START_FAILED)%' THEN 'PreStartFailed'
                WHEN e.message LIKE 'failed (READINESS_PROBE_FAILED)%' THEN 'ProbeFailed'
                WHEN e.message LIKE 'failed (%' THEN 'StartupFailed'
                WHEN e.message LIKE 'stopped (%' THEN 'Exited'
                WHEN e.message LIKE 'acquired from pool%' THEN 'Allocated'
                WHEN e.message LIKE 'released to pool%' THEN 'Released'
                ELSE 'Note'
            END,
            e.message, 'sandboxd', e.request_id
        FROM events e LEFT JOIN sandboxes s ON s.id = e.sandbox_id
        ORDER BY e.at, e.rowid;
     DROP TABLE events;",
    // 8: executions (outliving their sandboxes: no foreign key) and their batches.
    "CREATE TABLE executions (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        sandbox_id TEXT,
        batch_id TEXT,
        batch_index INTEGER,
        job_id TEXT,
        kind TEXT NOT NULL,
        language TEXT,
        handler TEXT,
        state TEXT NOT NULL,
        reason TEXT,
        message TEXT,
        exit_code INTEGER,
        duration_ms INTEGER,
        timeout INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        started_at INTEGER,
        finished_at INTEGER,
        transition_at INTEGER NOT NULL,
        deadline_at INTEGER,
        execd_ref TEXT,
        last_event_id INTEGER NOT NULL DEFAULT 0,
        output TEXT NOT NULL,
        one_shot INTEGER NOT NULL DEFAULT 0
     );
     CREATE INDEX executions_owner ON executions (owner, created_at);
     CREATE INDEX executions_batch ON executions (batch_id, batch_index);
     CREATE INDEX executions_state ON executions (state);
     CREATE TABLE batches (
        id TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        sandbox_id TEXT NOT NULL,
        total INTEGER NOT NULL,
        created_at INTEGER NOT NULL
     );",
    // 9: snapshots; the snapshot a sandbox was made from, its pause policy, what it was
    // launched with (for a Rootfs resume) and, while Rootfs-paused, its hibernation (JSON).
    "CREATE TABLE snapshots (
        id TEXT PRIMARY KEY,
        sandbox_id TEXT NOT NULL,
        name TEXT,
        owner TEXT NOT NULL,
        image TEXT NOT NULL,
        source TEXT NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        message TEXT,
        created_at INTEGER NOT NULL,
        transition_at INTEGER NOT NULL
     );
     CREATE INDEX snapshots_sandbox ON snapshots (sandbox_id);
     ALTER TABLE sandboxes ADD COLUMN snapshot_id TEXT;
     CREATE INDEX sandboxes_snapshot ON sandboxes (snapshot_id);
     ALTER TABLE sandboxes ADD COLUMN pause_policy TEXT;
     ALTER TABLE sandboxes ADD COLUMN launch TEXT;
     ALTER TABLE sandboxes ADD COLUMN hibernation TEXT;",
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The database, through its thread.
pub struct Store {
    jobs: mpsc::Sender<Job>,
    /// This state file's identity, labelled on every sandbox it owns, so that several
    /// sandboxd instances can share one runtime without touching each other's sandboxes.
    pub instance: String,
}

impl Store {
    /// Opens (creating when missing) `sandboxd.db` in `dir`, migrates it, and starts its
    /// thread.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = prepare(dir)?;
        let mut conn = Connection::open(&path).map_err(sql("open the state file"))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql("set WAL mode"))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql("set synchronous"))?;
        // Only another process on the same file (a second sandboxd on one --data-dir) makes
        // SQLite wait.
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql("set the busy timeout"))?;
        migrate(&mut conn)?;
        let instance: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'instance'", [], |r| r.get(0))
            .optional()
            .map_err(sql("read the instance id"))?;
        let instance = match instance {
            Some(id) => id,
            None => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                conn.execute("INSERT INTO meta (key, value) VALUES ('instance', ?1)", [&id])
                    .map_err(sql("write the instance id"))?;
                id
            }
        };
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("sandboxd-store".into())
            .spawn(move || {
                // Ends when the last `Store` handle is dropped.
                for job in queue {
                    job(&mut conn);
                }
            })
            .map_err(|e| StoreError::Io(format!("cannot start the store thread: {e}")))?;
        Ok(Self { jobs, instance })
    }

    /// Runs `f` on the store thread and returns its result.
    pub async fn call<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Box::new(move |conn| {
                let _ = reply.send(f(conn));
            }))
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// Makes the directory (0700 when created here) and the file (0600, also when it existed
/// with laxer modes); returns the file's path.
fn prepare(dir: &Path) -> Result<std::path::PathBuf, StoreError> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", dir.display())))?;
    }
    let path = dir.join("sandboxd.db");
    // SQLite gives the -wal and -shm files the database file's mode.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&path)
        .and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o600)))
        .map_err(|e| StoreError::Io(format!("cannot open {}: {e}", path.display())))?;
    for suffix in ["-wal", "-shm"] {
        let side = dir.join(format!("sandboxd.db{suffix}"));
        if side.exists() {
            std::fs::set_permissions(&side, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| StoreError::Io(format!("cannot restrict {}: {e}", side.display())))?;
        }
    }
    Ok(path)
}

/// Brings the file to [`SCHEMA_VERSION`], one transaction per step.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let mut version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(sql("read the schema version"))?;
    if version == 0 && has_table(conn, "sandboxes")? {
        // Written before versions were numbered: that schema is version 1.
        version = 1;
        conn.pragma_update(None, "user_version", 1)
            .map_err(sql("number the schema"))?;
    }
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    for (from, step) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let to = from as i64 + 1;
        let tx = conn.transaction().map_err(sql("begin a migration"))?;
        tx.execute_batch(step).map_err(sql("migrate the schema"))?;
        tx.pragma_update(None, "user_version", to)
            .map_err(sql("number the schema"))?;
        tx.commit().map_err(sql("commit a migration"))?;
        tracing::info!(from, to, "state file migrated");
    }
    Ok(())
}

fn has_table(conn: &Connection, name: &str) -> Result<bool, StoreError> {
    conn.query_row(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [name],
        |_| Ok(()),
    )
    .optional()
    .map(|found| found.is_some())
    .map_err(sql("read the schema"))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[tokio::test]
    async fn a_fresh_file_is_private_and_at_the_current_version() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let store = Store::open(&state).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("sandboxd.db")), 0o600);
        let version = store
            .call(|c| {
                c.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))
                    .map_err(sql("read"))
            })
            .await
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn an_existing_file_with_lax_modes_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sandboxd.db");
        std::fs::write(&file, b"").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(Store::open(dir.path()).unwrap());
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_file_from_a_newer_sandboxd_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join("sandboxd.db")).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        let Err(e) = Store::open(dir.path()) else {
            panic!("a newer schema was accepted");
        };
        assert!(matches!(e, StoreError::SchemaTooNew { found, supported }
            if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION));
        assert!(e.to_string().contains("newer"), "{e}");
    }
}

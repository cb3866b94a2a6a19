//! The `snapshots` table: one row per snapshot, its image, its state and what the source
//! sandbox was running (entrypoint and environment, which a sandbox made from it inherits).
//! A state this build does not know is an error, never a default.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension, Row};

use super::{sql, Store, StoreError};

const TABLE: &str = "snapshots";

/// Where a snapshot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotState {
    /// The commit runs.
    Creating,
    /// The image exists; sandboxes can be made from it.
    Ready,
    /// The commit failed (the row says why); nothing can be made from it.
    Failed,
    /// Its image is being removed.
    Deleting,
}

impl SnapshotState {
    /// The contract's name.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotState::Creating => "Creating",
            SnapshotState::Ready => "Ready",
            SnapshotState::Failed => "Failed",
            SnapshotState::Deleting => "Deleting",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "Creating" => Some(SnapshotState::Creating),
            "Ready" => Some(SnapshotState::Ready),
            "Failed" => Some(SnapshotState::Failed),
            "Deleting" => Some(SnapshotState::Deleting),
            _ => None,
        }
    }
}

/// What the source sandbox ran, inherited by sandboxes made from the snapshot unless their
/// request says otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SnapshotSource {
    /// The entrypoint.
    pub entrypoint: Vec<String>,
    /// The environment as created.
    pub env: BTreeMap<String, String>,
}

/// One snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    /// `snap-<uuid>`.
    pub id: String,
    /// The sandbox it was taken of.
    pub sandbox_id: String,
    /// Its name.
    pub name: Option<String>,
    /// The principal that took it.
    pub owner: String,
    /// `opensandbox-snapshots:<id>`.
    pub image: String,
    /// What the source ran.
    pub source: SnapshotSource,
    /// Where it is.
    pub state: SnapshotState,
    /// Why (`snapshot_capture_failed`, …).
    pub reason: Option<String>,
    /// For people.
    pub message: Option<String>,
    /// Epoch ms.
    pub created_at: i64,
    /// When `state` last changed, epoch ms.
    pub transition_at: i64,
}

const COLUMNS: &str =
    "id, sandbox_id, name, owner, image, source, state, reason, message, created_at, transition_at";

impl Store {
    /// Adds a snapshot.
    pub async fn insert_snapshot(&self, row: &SnapshotRow) -> Result<(), StoreError> {
        let row = row.clone();
        self.call(move |c| {
            c.execute(
                &format!(
                    "INSERT INTO snapshots ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
                ),
                params![
                    row.id,
                    row.sandbox_id,
                    row.name,
                    row.owner,
                    row.image,
                    serde_json::to_string(&row.source).unwrap_or_default(),
                    row.state.as_str(),
                    row.reason,
                    row.message,
                    row.created_at,
                    row.transition_at,
                ],
            )
            .map(drop)
            .map_err(sql("insert a snapshot"))
        })
        .await
    }

    /// Moves a snapshot to `state` (with its reason and message) if it is in `from` now.
    /// Returns false when it was not (or is gone): another request moved it first.
    pub async fn transition_snapshot(
        &self,
        id: &str,
        from: SnapshotState,
        state: SnapshotState,
        reason: Option<&str>,
        message: Option<&str>,
        at: i64,
    ) -> Result<bool, StoreError> {
        let (id, reason, message) = (
            id.to_owned(),
            reason.map(str::to_owned),
            message.map(str::to_owned),
        );
        self.call(move |c| {
            c.execute(
                "UPDATE snapshots SET state = ?3, reason = ?4, message = ?5, transition_at = ?6
                 WHERE id = ?1 AND state = ?2",
                params![id, from.as_str(), state.as_str(), reason, message, at],
            )
            .map(|n| n == 1)
            .map_err(sql("update a snapshot"))
        })
        .await
    }

    /// One snapshot.
    pub async fn snapshot(&self, id: &str) -> Result<Option<SnapshotRow>, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            c.query_row(
                &format!("SELECT {COLUMNS} FROM snapshots WHERE id = ?1"),
                [&id],
                raw,
            )
            .optional()
            .map_err(sql("read a snapshot"))?
            .map(row)
            .transpose()
        })
        .await
    }

    /// Every snapshot, newest first (unreadable rows are errors).
    pub async fn snapshots(&self) -> Result<Vec<SnapshotRow>, StoreError> {
        self.call(|c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM snapshots ORDER BY created_at DESC, rowid DESC"
                ))
                .map_err(sql("list snapshots"))?;
            let rows = stmt
                .query_map([], raw)
                .map_err(sql("list snapshots"))?
                .collect::<rusqlite::Result<Vec<Raw>>>()
                .map_err(sql("list snapshots"))?;
            rows.into_iter().map(row).collect()
        })
        .await
    }

    /// Forgets a snapshot. Returns false when it was not there.
    pub async fn remove_snapshot(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            c.execute("DELETE FROM snapshots WHERE id = ?1", [&id])
                .map(|n| n == 1)
                .map_err(sql("remove a snapshot"))
        })
        .await
    }
}

struct Raw {
    id: String,
    sandbox_id: String,
    name: Option<String>,
    owner: String,
    image: String,
    source: String,
    state: String,
    reason: Option<String>,
    message: Option<String>,
    created_at: i64,
    transition_at: i64,
}

fn raw(r: &Row<'_>) -> rusqlite::Result<Raw> {
    Ok(Raw {
        id: r.get(0)?,
        sandbox_id: r.get(1)?,
        name: r.get(2)?,
        owner: r.get(3)?,
        image: r.get(4)?,
        source: r.get(5)?,
        state: r.get(6)?,
        reason: r.get(7)?,
        message: r.get(8)?,
        created_at: r.get(9)?,
        transition_at: r.get(10)?,
    })
}

fn row(raw: Raw) -> Result<SnapshotRow, StoreError> {
    let Some(state) = SnapshotState::parse(&raw.state) else {
        return Err(StoreError::UnknownPhase {
            table: TABLE,
            id: raw.id,
            value: raw.state,
        });
    };
    let source = serde_json::from_str(&raw.source).map_err(|_| StoreError::Corrupt {
        table: TABLE,
        id: raw.id.clone(),
        field: "source",
    })?;
    Ok(SnapshotRow {
        id: raw.id,
        sandbox_id: raw.sandbox_id,
        name: raw.name,
        owner: raw.owner,
        image: raw.image,
        source,
        state,
        reason: raw.reason,
        message: raw.message,
        created_at: raw.created_at,
        transition_at: raw.transition_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: &str, at: i64) -> SnapshotRow {
        SnapshotRow {
            id: id.into(),
            sandbox_id: "sb".into(),
            name: Some("n".into()),
            owner: "root".into(),
            image: format!("opensandbox-snapshots:{id}"),
            source: SnapshotSource {
                entrypoint: vec!["sleep".into(), "infinity".into()],
                env: BTreeMap::from([("K".into(), "v".into())]),
            },
            state: SnapshotState::Creating,
            reason: None,
            message: None,
            created_at: at,
            transition_at: at,
        }
    }

    #[tokio::test]
    async fn snapshots_round_trip_and_move_only_from_the_state_they_are_in() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.insert_snapshot(&sample("a", 1)).await.unwrap();
        store.insert_snapshot(&sample("b", 2)).await.unwrap();
        assert_eq!(store.snapshot("a").await.unwrap(), Some(sample("a", 1)));
        let ids: Vec<_> = store
            .snapshots()
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(ids, ["b", "a"], "newest first");
        let ready = |from| {
            store.transition_snapshot("a", from, SnapshotState::Ready, Some("snapshot_ready"), None, 5)
        };
        assert!(!ready(SnapshotState::Deleting).await.unwrap());
        assert!(ready(SnapshotState::Creating).await.unwrap());
        let a = store.snapshot("a").await.unwrap().unwrap();
        assert_eq!(
            (a.state, a.reason.as_deref(), a.transition_at),
            (SnapshotState::Ready, Some("snapshot_ready"), 5)
        );
        assert!(store.remove_snapshot("a").await.unwrap());
        assert!(!store.remove_snapshot("a").await.unwrap());
        assert_eq!(store.snapshot("a").await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_unknown_state_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.insert_snapshot(&sample("a", 1)).await.unwrap();
        store
            .call(|c| {
                c.execute("UPDATE snapshots SET state = 'Exported'", [])
                    .map_err(sql("test"))
            })
            .await
            .unwrap();
        assert!(matches!(
            store.snapshot("a").await,
            Err(StoreError::UnknownPhase { value, .. }) if value == "Exported"
        ));
    }
}

//! The `prepull_tasks` table: one row per image prepull task, its state, reason and the
//! progress last persisted (JSON). Credentials are never stored, so a pull cannot outlive the
//! process that started it: at start-up, tasks left `Pending` or `Pulling` are marked failed
//! (`INTERRUPTED`). Finished tasks are kept for [`PREPULLS_KEPT_MS`].

use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};

use super::{sql, Store, StoreError};
use crate::wire::prepull::{PrepullProgress, PrepullState};

const TABLE: &str = "prepull_tasks";

/// How long a finished task is kept: 7 days.
pub const PREPULLS_KEPT_MS: i64 = 7 * 24 * 3600 * 1000;

/// One prepull task.
#[derive(Debug, Clone, PartialEq)]
pub struct PrepullRow {
    /// `pp-<uuid>`.
    pub id: String,
    /// The normalised image reference.
    pub image: String,
    /// The principal that created it.
    pub owner: String,
    /// The template (id, version) whose image this is.
    pub template: Option<(String, u32)>,
    /// Where it is.
    pub state: PrepullState,
    /// Why (`ALREADY_PRESENT`, `TIMEOUT`, …).
    pub reason: Option<String>,
    /// What happened, for people.
    pub message: Option<String>,
    /// The progress last persisted.
    pub progress: PrepullProgress,
    /// Seconds the pull may take once started.
    pub timeout: u64,
    /// Epoch ms.
    pub created_at: i64,
    /// When the pull started, epoch ms.
    pub started_at: Option<i64>,
    /// When it ended, epoch ms.
    pub completed_at: Option<i64>,
    /// When `state` last changed, epoch ms.
    pub transition_at: i64,
}

/// Which tasks a list returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrepullFilter {
    /// Only this (normalised) image's.
    pub image: Option<String>,
    /// Only tasks in this state.
    pub state: Option<PrepullState>,
    /// Only this template's.
    pub template_id: Option<String>,
    /// Only this owner's (`None`: everyone's).
    pub owner: Option<String>,
    /// 1-based page.
    pub page: u32,
    /// Items per page.
    pub page_size: u32,
}

const COLUMNS: &str = "id, image, owner, template_id, template_version, state, reason, message, progress, \
     timeout, created_at, started_at, completed_at, transition_at";

/// States that still change.
const ACTIVE: &str = "state IN ('Pending', 'Pulling')";

impl Store {
    /// Adds a task.
    pub async fn insert_prepull(&self, row: &PrepullRow) -> Result<(), StoreError> {
        let row = row.clone();
        self.call(move |c| {
            let (template_id, template_version) = template_columns(&row);
            c.execute(
                &format!(
                    "INSERT INTO prepull_tasks ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
                ),
                params![
                    row.id,
                    row.image,
                    row.owner,
                    template_id,
                    template_version,
                    row.state.as_str(),
                    row.reason,
                    row.message,
                    progress_json(&row.progress),
                    i64::try_from(row.timeout).unwrap_or(i64::MAX),
                    row.created_at,
                    row.started_at,
                    row.completed_at,
                    row.transition_at
                ],
            )
            .map(drop)
            .map_err(sql("insert a prepull task"))
        })
        .await
    }

    /// Writes a task's state, reason, message, progress and times; false when it no longer
    /// exists (deleted meanwhile).
    pub async fn update_prepull(&self, row: &PrepullRow) -> Result<bool, StoreError> {
        let row = row.clone();
        self.call(move |c| {
            c.execute(
                "UPDATE prepull_tasks SET state = ?2, reason = ?3, message = ?4, progress = ?5, started_at = ?6,
                    completed_at = ?7, transition_at = ?8 WHERE id = ?1",
                params![
                    row.id,
                    row.state.as_str(),
                    row.reason,
                    row.message,
                    progress_json(&row.progress),
                    row.started_at,
                    row.completed_at,
                    row.transition_at
                ],
            )
            .map(|n| n > 0)
            .map_err(sql("update a prepull task"))
        })
        .await
    }

    /// One task.
    pub async fn prepull(&self, id: &str) -> Result<Option<PrepullRow>, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            c.query_row(
                &format!("SELECT {COLUMNS} FROM prepull_tasks WHERE id = ?1"),
                [&id],
                |r| Ok(read(r)),
            )
            .optional()
            .map_err(sql("read a prepull task"))?
            .transpose()
        })
        .await
    }

    /// One page of the tasks `filter` selects, newest first (by creation, then by insertion
    /// for tasks made in the same millisecond), and how many it selects in all.
    pub async fn prepulls(&self, filter: &PrepullFilter) -> Result<(Vec<PrepullRow>, u64), StoreError> {
        let filter = filter.clone();
        self.call(move |c| list(c, &filter)).await
    }

    /// Deletes a task; false when it did not exist.
    pub async fn delete_prepull(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            c.execute("DELETE FROM prepull_tasks WHERE id = ?1", [&id])
                .map(|n| n > 0)
                .map_err(sql("delete a prepull task"))
        })
        .await
    }

    /// The newest task of `image` that is still `Pending` or `Pulling`, of `owner` when given.
    pub async fn active_prepull(
        &self,
        image: &str,
        owner: Option<&str>,
    ) -> Result<Option<PrepullRow>, StoreError> {
        let (image, owner) = (image.to_owned(), owner.map(str::to_owned));
        self.call(move |c| {
            c.query_row(
                &format!(
                    "SELECT {COLUMNS} FROM prepull_tasks WHERE image = ?1 AND {ACTIVE}
                     AND (?2 IS NULL OR owner = ?2) ORDER BY created_at DESC, rowid DESC LIMIT 1"
                ),
                params![image, owner],
                |r| Ok(read(r)),
            )
            .optional()
            .map_err(sql("find an active prepull task"))?
            .transpose()
        })
        .await
    }

    /// Marks every task still `Pending` or `Pulling` as `Failed` with `reason` and
    /// `message` at `now` (start-up: their pulls died with the previous process); returns
    /// their ids.
    pub async fn fail_active_prepulls(
        &self,
        now: i64,
        reason: &str,
        message: &str,
    ) -> Result<Vec<String>, StoreError> {
        let (reason, message) = (reason.to_owned(), message.to_owned());
        self.call(move |c| {
            let tx = c.transaction().map_err(sql("begin a prepull recovery"))?;
            let ids = {
                let mut stmt = tx
                    .prepare(&format!("SELECT id FROM prepull_tasks WHERE {ACTIVE}"))
                    .map_err(sql("find unfinished prepull tasks"))?;
                let rows = stmt
                    .query_map([], |r| r.get::<_, String>(0))
                    .map_err(sql("find unfinished prepull tasks"))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
                    .map_err(sql("find unfinished prepull tasks"))?
            };
            tx.execute(
                &format!(
                    "UPDATE prepull_tasks SET state = 'Failed', reason = ?2, message = ?3, completed_at = ?1,
                        transition_at = ?1 WHERE {ACTIVE}"
                ),
                params![now, reason, message],
            )
            .map_err(sql("fail unfinished prepull tasks"))?;
            tx.commit().map_err(sql("commit a prepull recovery"))?;
            Ok(ids)
        })
        .await
    }

    /// Deletes tasks that finished before `before` (epoch ms); returns how many.
    pub async fn purge_prepulls(&self, before: i64) -> Result<usize, StoreError> {
        self.call(move |c| {
            c.execute(
                &format!("DELETE FROM prepull_tasks WHERE NOT {ACTIVE} AND completed_at < ?1"),
                [before],
            )
            .map_err(sql("purge old prepull tasks"))
        })
        .await
    }
}

fn template_columns(row: &PrepullRow) -> (Option<&str>, Option<u32>) {
    match &row.template {
        Some((id, version)) => (Some(id), Some(*version)),
        None => (None, None),
    }
}

fn progress_json(p: &PrepullProgress) -> String {
    serde_json::to_string(p).expect("numbers serialize")
}

fn list(c: &Connection, f: &PrepullFilter) -> Result<(Vec<PrepullRow>, u64), StoreError> {
    let mut conditions = Vec::new();
    let mut values: Vec<String> = Vec::new();
    let mut condition = |column: &str, value: &str| {
        values.push(value.to_owned());
        conditions.push(format!("{column} = ?{}", values.len()));
    };
    if let Some(image) = &f.image {
        condition("image", image);
    }
    if let Some(state) = f.state {
        condition("state", state.as_str());
    }
    if let Some(template) = &f.template_id {
        condition("template_id", template);
    }
    if let Some(owner) = &f.owner {
        condition("owner", owner);
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let total: i64 = c
        .query_row(
            &format!("SELECT COUNT(*) FROM prepull_tasks {filter}"),
            params_from_iter(values.iter()),
            |r| r.get(0),
        )
        .map_err(sql("count prepull tasks"))?;
    let total = total.unsigned_abs();
    let size = u64::from(f.page_size.max(1));
    let offset = u64::from(f.page.max(1) - 1) * size;
    let mut stmt = c
        .prepare(&format!(
            "SELECT {COLUMNS} FROM prepull_tasks {filter} ORDER BY created_at DESC, rowid DESC LIMIT {size} OFFSET {offset}"
        ))
        .map_err(sql("list prepull tasks"))?;
    let rows = stmt
        .query_map(params_from_iter(values.iter()), |r| Ok(read(r)))
        .map_err(sql("list prepull tasks"))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sql("list prepull tasks"))?;
    Ok((rows.into_iter().collect::<Result<_, _>>()?, total))
}

fn read(r: &Row<'_>) -> Result<PrepullRow, StoreError> {
    let s = |e| sql("read a prepull task")(e);
    let id: String = r.get(0).map_err(s)?;
    let state: String = r.get(5).map_err(s)?;
    let state = PrepullState::parse(&state).ok_or_else(|| StoreError::UnknownPhase {
        table: TABLE,
        id: id.clone(),
        value: state,
    })?;
    let progress: String = r.get(8).map_err(s)?;
    let progress = serde_json::from_str(&progress).map_err(|_| StoreError::Corrupt {
        table: TABLE,
        id: id.clone(),
        field: "progress",
    })?;
    let timeout: i64 = r.get(9).map_err(s)?;
    let timeout = u64::try_from(timeout).map_err(|_| StoreError::Corrupt {
        table: TABLE,
        id: id.clone(),
        field: "timeout",
    })?;
    let template_id: Option<String> = r.get(3).map_err(s)?;
    let template_version: Option<u32> = r.get(4).map_err(s)?;
    let template = match (template_id, template_version) {
        (Some(t), Some(v)) => Some((t, v)),
        (None, None) => None,
        _ => {
            return Err(StoreError::Corrupt {
                table: TABLE,
                id,
                field: "template_version",
            })
        }
    };
    Ok(PrepullRow {
        image: r.get(1).map_err(s)?,
        owner: r.get(2).map_err(s)?,
        template,
        state,
        reason: r.get(6).map_err(s)?,
        message: r.get(7).map_err(s)?,
        progress,
        timeout,
        created_at: r.get(10).map_err(s)?,
        started_at: r.get(11).map_err(s)?,
        completed_at: r.get(12).map_err(s)?,
        transition_at: r.get(13).map_err(s)?,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, image: &str, owner: &str, state: PrepullState, at: i64) -> PrepullRow {
        PrepullRow {
            id: id.into(),
            image: image.into(),
            owner: owner.into(),
            template: None,
            state,
            reason: None,
            message: None,
            progress: PrepullProgress::default(),
            timeout: 600,
            created_at: at,
            started_at: None,
            completed_at: state.is_final().then_some(at),
            transition_at: at,
        }
    }

    #[tokio::test]
    async fn tasks_round_trip_filter_and_page_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut a = row("pp-a", "busybox:latest", "alice", PrepullState::Pulling, 1);
        a.template = Some(("tpl-1".into(), 3));
        a.progress.bytes_done = 7;
        store.insert_prepull(&a).await.unwrap();
        store
            .insert_prepull(&row("pp-b", "busybox:latest", "bob", PrepullState::Completed, 2))
            .await
            .unwrap();
        store
            .insert_prepull(&row("pp-c", "python:3", "alice", PrepullState::Failed, 3))
            .await
            .unwrap();
        assert_eq!(store.prepull("pp-a").await.unwrap().unwrap(), a);
        let page = |f: PrepullFilter| {
            let store = &store;
            async move {
                let (rows, total) = store.prepulls(&f).await.unwrap();
                (rows.into_iter().map(|r| r.id).collect::<Vec<_>>(), total)
            }
        };
        let all = PrepullFilter {
            page: 1,
            page_size: 20,
            ..Default::default()
        };
        assert_eq!(
            page(all.clone()).await,
            (vec!["pp-c".into(), "pp-b".into(), "pp-a".into()], 3)
        );
        assert_eq!(
            page(PrepullFilter {
                owner: Some("alice".into()),
                ..all.clone()
            })
            .await,
            (vec!["pp-c".into(), "pp-a".into()], 2)
        );
        assert_eq!(
            page(PrepullFilter {
                image: Some("busybox:latest".into()),
                state: Some(PrepullState::Completed),
                ..all.clone()
            })
            .await,
            (vec!["pp-b".into()], 1)
        );
        assert_eq!(
            page(PrepullFilter {
                template_id: Some("tpl-1".into()),
                ..all.clone()
            })
            .await,
            (vec!["pp-a".into()], 1)
        );
        assert_eq!(
            page(PrepullFilter {
                page: 2,
                page_size: 2,
                ..all
            })
            .await,
            (vec!["pp-a".into()], 3)
        );
        // Dedup sees only active tasks, of the owner when one is given.
        assert_eq!(
            store
                .active_prepull("busybox:latest", None)
                .await
                .unwrap()
                .map(|r| r.id),
            Some("pp-a".into())
        );
        assert_eq!(
            store.active_prepull("busybox:latest", Some("bob")).await.unwrap(),
            None
        );
        assert_eq!(store.active_prepull("python:3", None).await.unwrap(), None);
        assert!(store.delete_prepull("pp-c").await.unwrap());
        assert!(!store.delete_prepull("pp-c").await.unwrap());
        assert!(!store
            .update_prepull(&row("pp-c", "x", "y", PrepullState::Failed, 1))
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn unfinished_tasks_fail_at_start_up_and_old_ones_are_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .insert_prepull(&row("pp-pending", "a:1", "u", PrepullState::Pending, 10))
            .await
            .unwrap();
        store
            .insert_prepull(&row("pp-pulling", "b:1", "u", PrepullState::Pulling, 10))
            .await
            .unwrap();
        store
            .insert_prepull(&row("pp-old", "c:1", "u", PrepullState::Completed, 10))
            .await
            .unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let mut failed = store
            .fail_active_prepulls(50, "INTERRUPTED", "sandboxd restarted")
            .await
            .unwrap();
        failed.sort();
        assert_eq!(failed, ["pp-pending", "pp-pulling"]);
        let t = store.prepull("pp-pulling").await.unwrap().unwrap();
        assert_eq!(
            (t.state, t.reason.as_deref(), t.completed_at),
            (PrepullState::Failed, Some("INTERRUPTED"), Some(50))
        );
        // Finished at 10 and 50: only the first is older than 20.
        assert_eq!(store.purge_prepulls(20).await.unwrap(), 1);
        assert_eq!(store.prepull("pp-old").await.unwrap(), None);
        assert!(store.prepull("pp-pending").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn an_unknown_state_is_an_error_not_a_guess() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .insert_prepull(&row("pp-x", "a:1", "u", PrepullState::Pending, 1))
            .await
            .unwrap();
        store
            .call(|c| {
                c.execute("UPDATE prepull_tasks SET state = 'Hibernating'", [])
                    .map(drop)
                    .map_err(sql("test"))
            })
            .await
            .unwrap();
        assert!(matches!(
            store.prepull("pp-x").await,
            Err(StoreError::UnknownPhase { value, .. }) if value == "Hibernating"
        ));
    }
}

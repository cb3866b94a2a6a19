//! The `executions` and `batches` tables: one row per execution (its state, the execd run it
//! follows and the last event read of it, its capped output as JSON) and one per batch. Rows
//! outlive their sandbox; finished ones are purged after the retention time, and beyond
//! `maxStored` the oldest finished go first.

use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};

use super::{sql, Store, StoreError};
use crate::wire::executions::{ExecutionOutput, ExecutionState, ExecutionType};

const TABLE: &str = "executions";

/// One execution.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionRow {
    /// `exec-<uuid>`.
    pub id: String,
    /// The principal that submitted it.
    pub owner: String,
    /// Its sandbox (one-shot: once made).
    pub sandbox_id: Option<String>,
    /// Its batch, and its place (0-based) and job id there.
    pub batch: Option<BatchPlace>,
    /// What it runs.
    pub kind: ExecutionType,
    /// Code and handlers: the language.
    pub language: Option<String>,
    /// Handlers: the entry function.
    pub handler: Option<String>,
    /// Where it is.
    pub state: ExecutionState,
    /// Why (a catalog code).
    pub reason: Option<String>,
    /// What happened, for people.
    pub message: Option<String>,
    /// The process's exit code.
    pub exit_code: Option<i64>,
    /// Milliseconds from start to end.
    pub duration_ms: Option<u64>,
    /// Seconds it may run.
    pub timeout: u64,
    /// Epoch ms.
    pub created_at: i64,
    /// When it started running.
    pub started_at: Option<i64>,
    /// When it ended.
    pub finished_at: Option<i64>,
    /// When `state` last changed.
    pub transition_at: i64,
    /// When it is interrupted (epoch ms), once running.
    pub deadline_at: Option<i64>,
    /// The execd command it follows (id), once started; with its interrupt id.
    pub execd_ref: Option<String>,
    /// The last execd event id read and accounted for in `output`.
    pub last_event_id: u64,
    /// What it produced so far (capped).
    pub output: ExecutionOutput,
    /// One-shot: the sandbox was made for it and is deleted after it.
    pub one_shot: bool,
}

/// Where an execution sits in its batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPlace {
    /// `batch-<uuid>`.
    pub batch_id: String,
    /// 0-based position in the request.
    pub index: u32,
    /// The job's id.
    pub job_id: String,
}

/// One batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRow {
    /// `batch-<uuid>`.
    pub id: String,
    /// The principal that submitted it.
    pub owner: String,
    /// Its sandbox.
    pub sandbox_id: String,
    /// Jobs in all.
    pub total: u32,
    /// Epoch ms.
    pub created_at: i64,
}

/// Which executions a list returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutionFilter {
    /// Only this sandbox's.
    pub sandbox_id: Option<String>,
    /// Only this batch's (then in job order).
    pub batch_id: Option<String>,
    /// Only in this state.
    pub state: Option<ExecutionState>,
    /// Only this owner's (`None`: everyone's).
    pub owner: Option<String>,
    /// 1-based page.
    pub page: u32,
    /// Items per page.
    pub page_size: u32,
}

const COLUMNS: &str = "id, owner, sandbox_id, batch_id, batch_index, job_id, kind, language, handler, state, reason, \
     message, exit_code, duration_ms, timeout, created_at, started_at, finished_at, transition_at, deadline_at, \
     execd_ref, last_event_id, output, one_shot";

/// States that still change.
const ACTIVE: &str = "state IN ('Acquiring', 'Queued', 'Running')";

impl Store {
    /// Adds an execution.
    pub async fn insert_execution(&self, row: &ExecutionRow) -> Result<(), StoreError> {
        let row = row.clone();
        self.call(move |c| insert(c, &row)).await
    }

    /// Adds a batch and its executions, in one transaction.
    pub async fn insert_batch(&self, batch: &BatchRow, rows: &[ExecutionRow]) -> Result<(), StoreError> {
        let (batch, rows) = (batch.clone(), rows.to_vec());
        self.call(move |c| {
            let tx = c.transaction().map_err(sql("begin a batch insert"))?;
            tx.execute(
                "INSERT INTO batches (id, owner, sandbox_id, total, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    batch.id,
                    batch.owner,
                    batch.sandbox_id,
                    batch.total,
                    batch.created_at
                ],
            )
            .map_err(sql("insert a batch"))?;
            for row in &rows {
                insert(&tx, row)?;
            }
            tx.commit().map_err(sql("commit a batch insert"))
        })
        .await
    }

    /// Writes everything but the identity of an execution; false when it no longer exists.
    pub async fn update_execution(&self, row: &ExecutionRow) -> Result<bool, StoreError> {
        let row = row.clone();
        self.call(move |c| {
            c.execute(
                "UPDATE executions SET sandbox_id = ?2, state = ?3, reason = ?4, message = ?5, exit_code = ?6,
                    duration_ms = ?7, started_at = ?8, finished_at = ?9, transition_at = ?10, deadline_at = ?11,
                    execd_ref = ?12, last_event_id = ?13, output = ?14 WHERE id = ?1",
                params![
                    row.id,
                    row.sandbox_id,
                    row.state.as_str(),
                    row.reason,
                    row.message,
                    row.exit_code,
                    row.duration_ms.map(|d| i64::try_from(d).unwrap_or(i64::MAX)),
                    row.started_at,
                    row.finished_at,
                    row.transition_at,
                    row.deadline_at,
                    row.execd_ref,
                    i64::try_from(row.last_event_id).unwrap_or(i64::MAX),
                    output_json(&row.output),
                ],
            )
            .map(|n| n > 0)
            .map_err(sql("update an execution"))
        })
        .await
    }

    /// One execution.
    pub async fn execution(&self, id: &str) -> Result<Option<ExecutionRow>, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            c.query_row(
                &format!("SELECT {COLUMNS} FROM executions WHERE id = ?1"),
                [&id],
                |r| Ok(read(r)),
            )
            .optional()
            .map_err(sql("read an execution"))?
            .transpose()
        })
        .await
    }

    /// One batch.
    pub async fn batch(&self, id: &str) -> Result<Option<BatchRow>, StoreError> {
        let id = id.to_owned();
        self.call(move |c| {
            c.query_row(
                "SELECT id, owner, sandbox_id, total, created_at FROM batches WHERE id = ?1",
                [&id],
                |r| {
                    Ok(BatchRow {
                        id: r.get(0)?,
                        owner: r.get(1)?,
                        sandbox_id: r.get(2)?,
                        total: r.get(3)?,
                        created_at: r.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(sql("read a batch"))
        })
        .await
    }

    /// One page of the executions `filter` selects (newest first; a batch's in job order),
    /// and how many it selects in all.
    pub async fn executions(&self, filter: &ExecutionFilter) -> Result<(Vec<ExecutionRow>, u64), StoreError> {
        let filter = filter.clone();
        self.call(move |c| list(c, &filter)).await
    }

    /// Every execution still `Acquiring`, `Queued` or `Running` (start-up recovery).
    pub async fn active_executions(&self) -> Result<Vec<ExecutionRow>, StoreError> {
        self.call(move |c| {
            let mut stmt = c
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM executions WHERE {ACTIVE} ORDER BY created_at, rowid"
                ))
                .map_err(sql("find unfinished executions"))?;
            let rows = stmt
                .query_map([], |r| Ok(read(r)))
                .map_err(sql("find unfinished executions"))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql("find unfinished executions"))?;
            rows.into_iter().collect()
        })
        .await
    }

    /// How many executions of `owner` are running or waiting.
    pub async fn count_active_executions(&self, owner: &str) -> Result<u64, StoreError> {
        let owner = owner.to_owned();
        self.call(move |c| {
            c.query_row(
                &format!("SELECT COUNT(*) FROM executions WHERE owner = ?1 AND {ACTIVE}"),
                [&owner],
                |r| r.get::<_, i64>(0),
            )
            .map(i64::unsigned_abs)
            .map_err(sql("count running executions"))
        })
        .await
    }

    /// Deletes finished executions that ended before `before` (epoch ms), then the oldest
    /// finished ones beyond `max_stored` rows, then batches left without executions; returns
    /// how many executions went.
    pub async fn purge_executions(&self, before: i64, max_stored: u64) -> Result<usize, StoreError> {
        self.call(move |c| {
            let tx = c.transaction().map_err(sql("begin an execution purge"))?;
            let mut n = tx
                .execute(
                    &format!("DELETE FROM executions WHERE NOT {ACTIVE} AND finished_at < ?1"),
                    [before],
                )
                .map_err(sql("purge old executions"))?;
            let count: i64 = tx
                .query_row("SELECT COUNT(*) FROM executions", [], |r| r.get(0))
                .map_err(sql("count executions"))?;
            let excess = count.unsigned_abs().saturating_sub(max_stored);
            if excess > 0 {
                n += tx
                    .execute(
                        &format!(
                            "DELETE FROM executions WHERE rowid IN (SELECT rowid FROM executions WHERE NOT {ACTIVE}
                             ORDER BY finished_at, rowid LIMIT ?1)"
                        ),
                        [i64::try_from(excess).unwrap_or(i64::MAX)],
                    )
                    .map_err(sql("purge excess executions"))?;
            }
            tx.execute(
                "DELETE FROM batches WHERE NOT EXISTS (SELECT 1 FROM executions WHERE batch_id = batches.id)",
                [],
            )
            .map_err(sql("purge empty batches"))?;
            tx.commit().map_err(sql("commit an execution purge"))?;
            Ok(n)
        })
        .await
    }
}

fn insert(c: &Connection, row: &ExecutionRow) -> Result<(), StoreError> {
    let (batch_id, batch_index, job_id) = match &row.batch {
        Some(b) => (Some(b.batch_id.as_str()), Some(b.index), Some(b.job_id.as_str())),
        None => (None, None, None),
    };
    c.execute(
        &format!(
            "INSERT INTO executions ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,
             ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24)"
        ),
        params![
            row.id,
            row.owner,
            row.sandbox_id,
            batch_id,
            batch_index,
            job_id,
            row.kind.as_str(),
            row.language,
            row.handler,
            row.state.as_str(),
            row.reason,
            row.message,
            row.exit_code,
            row.duration_ms.map(|d| i64::try_from(d).unwrap_or(i64::MAX)),
            i64::try_from(row.timeout).unwrap_or(i64::MAX),
            row.created_at,
            row.started_at,
            row.finished_at,
            row.transition_at,
            row.deadline_at,
            row.execd_ref,
            i64::try_from(row.last_event_id).unwrap_or(i64::MAX),
            output_json(&row.output),
            row.one_shot,
        ],
    )
    .map(drop)
    .map_err(sql("insert an execution"))
}

fn output_json(o: &ExecutionOutput) -> String {
    serde_json::to_string(o).expect("strings and JSON values serialize")
}

fn list(c: &Connection, f: &ExecutionFilter) -> Result<(Vec<ExecutionRow>, u64), StoreError> {
    let mut conditions = Vec::new();
    let mut values: Vec<String> = Vec::new();
    let mut condition = |column: &str, value: &str| {
        values.push(value.to_owned());
        conditions.push(format!("{column} = ?{}", values.len()));
    };
    if let Some(sandbox) = &f.sandbox_id {
        condition("sandbox_id", sandbox);
    }
    if let Some(batch) = &f.batch_id {
        condition("batch_id", batch);
    }
    if let Some(state) = f.state {
        condition("state", state.as_str());
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
            &format!("SELECT COUNT(*) FROM executions {filter}"),
            params_from_iter(values.iter()),
            |r| r.get(0),
        )
        .map_err(sql("count executions"))?;
    let size = u64::from(f.page_size.max(1));
    let offset = u64::from(f.page.max(1) - 1) * size;
    let order = if f.batch_id.is_some() {
        "batch_index"
    } else {
        "created_at DESC, rowid DESC"
    };
    let mut stmt = c
        .prepare(&format!(
            "SELECT {COLUMNS} FROM executions {filter} ORDER BY {order} LIMIT {size} OFFSET {offset}"
        ))
        .map_err(sql("list executions"))?;
    let rows = stmt
        .query_map(params_from_iter(values.iter()), |r| Ok(read(r)))
        .map_err(sql("list executions"))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sql("list executions"))?;
    Ok((rows.into_iter().collect::<Result<_, _>>()?, total.unsigned_abs()))
}

fn read(r: &Row<'_>) -> Result<ExecutionRow, StoreError> {
    let s = |e| sql("read an execution")(e);
    let id: String = r.get(0).map_err(s)?;
    let corrupt = |field| StoreError::Corrupt {
        table: TABLE,
        id: id.clone(),
        field,
    };
    let batch_id: Option<String> = r.get(3).map_err(s)?;
    let batch_index: Option<u32> = r.get(4).map_err(s)?;
    let job_id: Option<String> = r.get(5).map_err(s)?;
    let batch = match (batch_id, batch_index, job_id) {
        (Some(batch_id), Some(index), Some(job_id)) => Some(BatchPlace {
            batch_id,
            index,
            job_id,
        }),
        (None, None, None) => None,
        _ => return Err(corrupt("batch_index")),
    };
    let kind: String = r.get(6).map_err(s)?;
    let kind = ExecutionType::parse(&kind).ok_or_else(|| corrupt("kind"))?;
    let state: String = r.get(9).map_err(s)?;
    let state = ExecutionState::parse(&state).ok_or_else(|| StoreError::UnknownPhase {
        table: TABLE,
        id: id.clone(),
        value: state,
    })?;
    let duration: Option<i64> = r.get(13).map_err(s)?;
    let duration_ms = duration
        .map(u64::try_from)
        .transpose()
        .map_err(|_| corrupt("duration_ms"))?;
    let timeout: i64 = r.get(14).map_err(s)?;
    let timeout = u64::try_from(timeout).map_err(|_| corrupt("timeout"))?;
    let last: i64 = r.get(21).map_err(s)?;
    let last_event_id = u64::try_from(last).map_err(|_| corrupt("last_event_id"))?;
    let output: String = r.get(22).map_err(s)?;
    let output = serde_json::from_str(&output).map_err(|_| corrupt("output"))?;
    Ok(ExecutionRow {
        owner: r.get(1).map_err(s)?,
        sandbox_id: r.get(2).map_err(s)?,
        batch,
        kind,
        language: r.get(7).map_err(s)?,
        handler: r.get(8).map_err(s)?,
        state,
        reason: r.get(10).map_err(s)?,
        message: r.get(11).map_err(s)?,
        exit_code: r.get(12).map_err(s)?,
        duration_ms,
        timeout,
        created_at: r.get(15).map_err(s)?,
        started_at: r.get(16).map_err(s)?,
        finished_at: r.get(17).map_err(s)?,
        transition_at: r.get(18).map_err(s)?,
        deadline_at: r.get(19).map_err(s)?,
        execd_ref: r.get(20).map_err(s)?,
        last_event_id,
        output,
        one_shot: r.get(23).map_err(s)?,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn row(id: &str, owner: &str, state: ExecutionState, at: i64) -> ExecutionRow {
        ExecutionRow {
            id: id.into(),
            owner: owner.into(),
            sandbox_id: Some("sb-1".into()),
            batch: None,
            kind: ExecutionType::Command,
            language: None,
            handler: None,
            state,
            reason: None,
            message: None,
            exit_code: None,
            duration_ms: None,
            timeout: 30,
            created_at: at,
            started_at: None,
            finished_at: state.is_terminal().then_some(at),
            transition_at: at,
            deadline_at: None,
            execd_ref: None,
            last_event_id: 0,
            output: ExecutionOutput::default(),
            one_shot: false,
        }
    }

    #[tokio::test]
    async fn executions_round_trip_filter_page_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut a = row("exec-a", "alice", ExecutionState::Running, 1);
        a.output.stdout = "hi\n".into();
        a.output.result = Some(serde_json::json!({"k": [1, 2]}));
        a.last_event_id = 7;
        a.execd_ref = Some("cmd-1".into());
        store.insert_execution(&a).await.unwrap();
        assert_eq!(store.execution("exec-a").await.unwrap().unwrap(), a);
        store
            .insert_execution(&row("exec-b", "bob", ExecutionState::Succeeded, 2))
            .await
            .unwrap();
        let batch = BatchRow {
            id: "batch-1".into(),
            owner: "alice".into(),
            sandbox_id: "sb-1".into(),
            total: 2,
            created_at: 3,
        };
        let member = |id: &str, index: u32| ExecutionRow {
            batch: Some(BatchPlace {
                batch_id: "batch-1".into(),
                index,
                job_id: format!("job-{index}"),
            }),
            ..row(id, "alice", ExecutionState::Queued, 3)
        };
        // Inserted out of order: the batch lists in job order.
        store
            .insert_batch(&batch, &[member("exec-d", 1), member("exec-c", 0)])
            .await
            .unwrap();
        assert_eq!(store.batch("batch-1").await.unwrap(), Some(batch));
        let ids = |f: ExecutionFilter| {
            let store = &store;
            async move {
                let (rows, total) = store.executions(&f).await.unwrap();
                (rows.into_iter().map(|r| r.id).collect::<Vec<_>>(), total)
            }
        };
        let all = ExecutionFilter {
            page: 1,
            page_size: 20,
            ..Default::default()
        };
        assert_eq!(
            ids(ExecutionFilter {
                batch_id: Some("batch-1".into()),
                ..all.clone()
            })
            .await,
            (vec!["exec-c".into(), "exec-d".into()], 2)
        );
        assert_eq!(
            ids(ExecutionFilter {
                owner: Some("bob".into()),
                ..all.clone()
            })
            .await,
            (vec!["exec-b".into()], 1)
        );
        assert_eq!(
            ids(ExecutionFilter {
                state: Some(ExecutionState::Running),
                ..all.clone()
            })
            .await
            .1,
            1
        );
        assert_eq!(store.count_active_executions("alice").await.unwrap(), 3);
        assert_eq!(store.active_executions().await.unwrap().len(), 3);
        // Only the finished one (bob's, at 2) is old enough.
        assert_eq!(store.purge_executions(10, 100).await.unwrap(), 1);
        assert_eq!(store.execution("exec-b").await.unwrap(), None);
        // Unfinished ones are never purged for space.
        assert_eq!(store.purge_executions(0, 0).await.unwrap(), 0);
        assert!(store.batch("batch-1").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn an_unknown_state_is_an_error_not_a_guess() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .insert_execution(&row("exec-x", "u", ExecutionState::Queued, 1))
            .await
            .unwrap();
        store
            .call(|c| {
                c.execute("UPDATE executions SET state = 'Sleeping'", [])
                    .map(drop)
                    .map_err(sql("test"))
            })
            .await
            .unwrap();
        assert!(matches!(
            store.execution("exec-x").await,
            Err(StoreError::UnknownPhase { value, .. }) if value == "Sleeping"
        ));
    }
}

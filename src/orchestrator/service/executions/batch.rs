//! Batches (§13.2): up to 100 jobs validated as a whole (one bad job and nothing starts),
//! stored together, then run by one task that owns every job's run: code jobs one after the
//! other in a fresh context per language (so later jobs see earlier definitions), command
//! and handler jobs up to `concurrency` at once, and with `stopOnError` the jobs not yet
//! started after a failure end `Cancelled`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex as AsyncMutex, Semaphore};

use super::run::{outcome_of, Sandbox};
use super::runner::Language;
use super::{new_id, new_row, validate, Job, Live};
use crate::orchestrator::auth::{Perm, Principal};
use crate::orchestrator::error::{Conflict, Error, Kind};
use crate::orchestrator::runtime::EXECD_PORT;
use crate::orchestrator::service::Service;
use crate::orchestrator::store::{BatchPlace, BatchRow, ExecutionFilter, ExecutionRow, Record};
use crate::wire::errors as codes;
use crate::wire::executions::{
    BatchJobResult, BatchRequest, BatchSummary, ExecutionRequest, ExecutionState, ExecutionType,
    MAX_BATCH_JOBS, MAX_CONCURRENCY,
};
use crate::wire::time::{format_ms, now_ms};

/// The longest job id.
const MAX_JOB_ID: usize = 128;

/// A batch's jobs, checked: (job id, request, job).
fn validate_batch(req: &BatchRequest) -> Result<Vec<(String, Job)>, Error> {
    if req.jobs.is_empty() {
        return Err(Error::invalid("jobs must not be empty"));
    }
    if req.jobs.len() > MAX_BATCH_JOBS {
        return Err(Error::invalid(format!(
            "a batch holds at most {MAX_BATCH_JOBS} jobs, got {}",
            req.jobs.len()
        )));
    }
    let concurrency = req.concurrency.unwrap_or(1);
    if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
        return Err(Error::invalid(format!(
            "concurrency must be between 1 and {MAX_CONCURRENCY}, got {concurrency}"
        )));
    }
    let mut seen = HashSet::new();
    let mut jobs = Vec::with_capacity(req.jobs.len());
    for (index, raw) in req.jobs.iter().enumerate() {
        let mut fields = raw.clone();
        let id = match fields.remove("id") {
            Some(serde_json::Value::String(id)) if !id.is_empty() && id.len() <= MAX_JOB_ID => id,
            Some(serde_json::Value::String(id)) => {
                return Err(Error::invalid(format!(
                    "jobs[{index}]: id must be 1–{MAX_JOB_ID} characters, got {} ",
                    id.len()
                )))
            }
            Some(_) => return Err(Error::invalid(format!("jobs[{index}]: id must be a string"))),
            None => return Err(Error::invalid(format!("jobs[{index}]: id is required"))),
        };
        let named = |message: String| format!("jobs[{index}] (id {id:?}): {message}");
        if !seen.insert(id.clone()) {
            return Err(Error::invalid(named("the id is used by an earlier job".into())));
        }
        let request: ExecutionRequest = serde_json::from_value(serde_json::Value::Object(fields))
            .map_err(|e| Error::invalid(named(e.to_string())))?;
        let job = validate(&request, false).map_err(|e| match e {
            Error::Invalid(m) => Error::invalid(named(m)),
            Error::UnsupportedLanguage(m) => Error::UnsupportedLanguage(named(m)),
            other => other,
        })?;
        jobs.push((id, job));
    }
    Ok(jobs)
}

impl Service {
    /// `POST /sandboxes/{id}/executions/batch`: validates every job (nothing starts unless all
    /// pass), stores the batch and its executions `Queued`, and runs them; with `wait`,
    /// answers once all ended or `wait` passed (the flag: all ended).
    pub async fn submit_batch(
        self: &Arc<Self>,
        sandbox_id: &str,
        req: BatchRequest,
        wait: Option<Duration>,
        caller: &Principal,
    ) -> Result<(BatchSummary, bool), Error> {
        caller.require(Perm::Write)?;
        let jobs = validate_batch(&req)?;
        let record = self.running_sandbox(sandbox_id, caller).await?;
        if jobs.iter().any(|(_, job)| job.isolated) && !super::isolation_enabled(&record) {
            return Err(Error::Conflict(Conflict::IsolationUnavailable));
        }
        let batch = BatchRow {
            id: format!("batch-{}", uuid::Uuid::new_v4()),
            owner: caller.id.clone(),
            sandbox_id: record.id.clone(),
            total: jobs.len() as u32,
            created_at: now_ms(),
        };
        let mut planned = Vec::with_capacity(jobs.len());
        for (index, (job_id, job)) in jobs.into_iter().enumerate() {
            let mut row = new_row(
                new_id(),
                &caller.id,
                Some(record.id.clone()),
                &job,
                ExecutionState::Queued,
            );
            row.batch = Some(BatchPlace {
                batch_id: batch.id.clone(),
                index: index as u32,
                job_id,
            });
            planned.push((row, job));
        }
        let rows: Vec<ExecutionRow> = planned.iter().map(|(r, _)| r.clone()).collect();
        self.store.insert_batch(&batch, &rows).await?;
        let runs: Vec<_> = planned
            .into_iter()
            .map(|(row, job)| {
                let live = self.executions.register(&row.id, row.state);
                (row, job, live)
            })
            .collect();
        let lives: Vec<Arc<Live>> = runs.iter().map(|(_, _, l)| l.clone()).collect();
        tracing::info!(batch = %batch.id, sandbox = sandbox_id, jobs = runs.len(), "batch submitted");
        let service = self.clone();
        let settings = (
            req.concurrency.unwrap_or(1) as usize,
            req.stop_on_error.unwrap_or(false),
        );
        tokio::spawn(async move { service.run_batch(runs, record, settings.0, settings.1).await });
        if let Some(wait) = wait.filter(|w| !w.is_zero()) {
            let all = async {
                for live in lives {
                    let mut rx = live.changed.subscribe();
                    let _ = rx.wait_for(|(s, _)| s.is_terminal()).await;
                }
            };
            let _ = tokio::time::timeout(wait, all).await;
        }
        let summary = self.summary(&batch).await?;
        let ended = summary.pending == 0;
        Ok((summary, ended))
    }

    /// `GET /executions/batches/{id}`.
    pub async fn batch_summary(&self, id: &str, caller: &Principal) -> Result<BatchSummary, Error> {
        caller.require(Perm::Read)?;
        let batch = self
            .store
            .batch(id)
            .await?
            .filter(|b| caller.may_see(&b.owner))
            .ok_or_else(|| Error::not_found(Kind::Batch, id))?;
        self.summary(&batch).await
    }

    async fn summary(&self, batch: &BatchRow) -> Result<BatchSummary, Error> {
        let (rows, _) = self
            .store
            .executions(&ExecutionFilter {
                batch_id: Some(batch.id.clone()),
                page: 1,
                page_size: MAX_BATCH_JOBS as u32,
                ..Default::default()
            })
            .await?;
        let mut summary = BatchSummary {
            batch_id: batch.id.clone(),
            sandbox_id: batch.sandbox_id.clone(),
            total: batch.total,
            succeeded: 0,
            failed: 0,
            pending: 0,
            results: Vec::with_capacity(rows.len()),
        };
        for row in rows {
            match row.state {
                ExecutionState::Succeeded => summary.succeeded += 1,
                s if s.is_terminal() => summary.failed += 1,
                _ => summary.pending += 1,
            }
            let view = super::execution(&row);
            summary.results.push(BatchJobResult {
                job_id: row.batch.map(|b| b.job_id).unwrap_or_default(),
                execution_id: row.id,
                success: row.state == ExecutionState::Succeeded,
                status: view.status,
                exit_code: row.exit_code,
                duration_ms: row.duration_ms,
                started_at: row.started_at.map(format_ms),
                finished_at: row.finished_at.map(format_ms),
                output: row.output,
            });
        }
        Ok(summary)
    }

    /// Runs a batch's jobs in order: code jobs one at a time in the batch's contexts, others
    /// up to `concurrency` at once. Owns every job's run (a `JoinSet`).
    async fn run_batch(
        self: Arc<Self>,
        runs: Vec<(ExecutionRow, Job, Arc<Live>)>,
        record: Record,
        concurrency: usize,
        stop_on_error: bool,
    ) {
        let slots = Arc::new(Semaphore::new(concurrency.max(1)));
        let code_lane = Arc::new(AsyncMutex::new(HashMap::<Language, String>::new()));
        let failed = Arc::new(AtomicBool::new(false));
        let mut running = tokio::task::JoinSet::new();
        for (mut row, job, live) in runs {
            enum Turn {
                Code(tokio::sync::OwnedMutexGuard<HashMap<Language, String>>),
                Slot(tokio::sync::OwnedSemaphorePermit),
            }
            let turn = if job.kind == ExecutionType::Code {
                Turn::Code(code_lane.clone().lock_owned().await)
            } else {
                match slots.clone().acquire_owned().await {
                    Ok(permit) => Turn::Slot(permit),
                    Err(_) => break,
                }
            };
            if stop_on_error && failed.load(Ordering::SeqCst) {
                let mut o = outcome_of(
                    &codes::EXECUTION_CANCELLED,
                    "not started: an earlier job of the batch failed (stopOnError)".into(),
                );
                o.cancelled();
                self.settle_execution(&mut row, &live, o).await;
                self.executions.finish(&row.id);
                continue;
            }
            let (service, record, failed) = (self.clone(), record.clone(), failed.clone());
            running.spawn(async move {
                // The failure is noted before the turn is given up, so that the next job,
                // which waits for the turn, sees it.
                match turn {
                    Turn::Code(mut contexts) => {
                        let context = match &job.payload {
                            super::Payload::Code { context_id: None, .. } => {
                                let language = job.language.unwrap_or(Language::Python);
                                service.batch_context(&record, &mut contexts, language).await
                            }
                            _ => None,
                        };
                        service.run_in(&mut row, &job, record, &live, context).await;
                        if row.state != ExecutionState::Succeeded {
                            failed.store(true, Ordering::SeqCst);
                        }
                        drop(contexts);
                    }
                    Turn::Slot(permit) => {
                        service.run_in(&mut row, &job, record, &live, None).await;
                        if row.state != ExecutionState::Succeeded {
                            failed.store(true, Ordering::SeqCst);
                        }
                        drop(permit);
                    }
                }
                service.executions.finish(&row.id);
            });
        }
        while running.join_next().await.is_some() {}
        let contexts = std::mem::take(&mut *code_lane.lock().await);
        if let Some(target) = record
            .instance
            .as_ref()
            .and_then(|i| self.runtime.target(i, EXECD_PORT))
        {
            for id in contexts.values() {
                if let Err(e) = self.execd.delete_context(&target, &record.token, id).await {
                    tracing::debug!(context = %id, error = %e, "cannot delete a batch's code context");
                }
            }
        }
    }

    /// The batch's fresh context for `language`, made on first use; none when execd cannot
    /// make one (the job then runs in the language's default context).
    async fn batch_context(
        &self,
        record: &Record,
        contexts: &mut HashMap<Language, String>,
        language: Language,
    ) -> Option<String> {
        if let Some(id) = contexts.get(&language) {
            return Some(id.clone());
        }
        let target = record
            .instance
            .as_ref()
            .and_then(|i| self.runtime.target(i, EXECD_PORT))?;
        let sandbox = Sandbox {
            record: record.clone(),
            target,
        };
        match self
            .execd
            .create_context(&sandbox.target, &record.token, language.as_str())
            .await
        {
            Ok(id) => {
                contexts.insert(language, id.clone());
                Some(id)
            }
            Err(e) => {
                tracing::warn!(sandbox = %record.id, error = %e, "cannot make a batch's code context");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(jobs: serde_json::Value) -> BatchRequest {
        serde_json::from_value(serde_json::json!({ "jobs": jobs })).unwrap()
    }

    #[test]
    fn batches_are_validated_as_a_whole_and_errors_name_the_job() {
        let ok = batch(serde_json::json!([
            {"id": "job-1", "code": "2+2", "timeout": 5},
            {"id": "job-2", "command": "ls", "timeout": 5}
        ]));
        let jobs = validate_batch(&ok).unwrap();
        assert_eq!(jobs.len(), 2);
        assert_eq!(jobs[0].1.kind, ExecutionType::Code);
        assert_eq!(jobs[1].1.kind, ExecutionType::Command);
        let message = |req: &BatchRequest| match validate_batch(req) {
            Err(Error::Invalid(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(message(&batch(serde_json::json!([]))).contains("empty"));
        let many: Vec<_> = (0..101)
            .map(|i| serde_json::json!({"id": format!("j{i}"), "command": "true"}))
            .collect();
        assert!(message(&batch(serde_json::Value::Array(many))).contains("at most 100"));
        let dup = batch(serde_json::json!([{"id": "a", "command": "x"}, {"id": "a", "command": "y"}]));
        assert!(message(&dup).contains("jobs[1] (id \"a\")"), "{}", message(&dup));
        let bad = batch(
            serde_json::json!([{"id": "a", "command": "x"}, {"id": "b", "command": "y", "timeout": 0}]),
        );
        assert!(
            message(&bad).starts_with("jobs[1] (id \"b\"): timeout"),
            "{}",
            message(&bad)
        );
        let unknown = batch(serde_json::json!([{"id": "a", "comand": "x"}]));
        assert!(message(&unknown).contains("comand"), "{}", message(&unknown));
        let no_id = batch(serde_json::json!([{"command": "x"}]));
        assert!(message(&no_id).contains("id is required"));
        let mut c = batch(serde_json::json!([{"id": "a", "command": "x"}]));
        c.concurrency = Some(9);
        assert!(message(&c).contains("concurrency"));
        let lang = batch(serde_json::json!([{"id": "a", "code": "x", "language": "cobol"}]));
        assert!(matches!(validate_batch(&lang), Err(Error::UnsupportedLanguage(m)) if m.contains("jobs[0]")));
    }
}

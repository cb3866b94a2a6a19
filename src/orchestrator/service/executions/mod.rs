//! Executions: a handler called with an event, code in a context, or a command, run in a
//! sandbox through its execd, with a status and a result kept in the store (§12–§13).
//!
//! - Admission (`submit_execution`, `submit_one_shot`, `submit_batch`): the request is
//!   validated whole (`validate`), the sandbox must be the caller's and `Running` by its record
//!   (no engine round trip), the row is stored `Queued`, and a task owned by the service runs
//!   it (`run`). `?wait=` waits on the execution's state for at most that long.
//! - sandboxd itself consumes execd's event stream of every execution and persists the
//!   output as it goes (at most every 500 ms, with the last execd event id), so a result never
//!   depends on a caller staying; a dropped stream of a command is followed again from that
//!   id (execd keeps the journal); `Lost` only when execd's `/ping` and the runtime both say
//!   the sandbox is gone for `lost_after`. A restarted sandboxd re-attaches to what was
//!   running (`recover_executions`).
//! - Reads (`execution`, `execution_result`, `list_executions`, `watch_execution`) are owner
//!   scoped: someone else's execution is not found.
//! - Finished executions are purged after the retention time, the oldest first beyond
//!   `max_stored` (`run_execution_housekeeping`).
//!
//! Async; the in-memory state is behind std `Mutex`es never held across an `.await`.

mod batch;
mod run;
pub mod runner;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::StreamExt as _;
use tokio::sync::watch;

use self::runner::Language;
use super::Service;
use crate::orchestrator::auth::{Perm, Principal, Role};
use crate::orchestrator::error::{Conflict, Error, Kind};
use crate::orchestrator::store::{ExecutionFilter, ExecutionRow, Phase, Record};
use crate::wire::executions::{
    Execution, ExecutionOutput, ExecutionRequest, ExecutionResult, ExecutionState, ExecutionStatus,
    ExecutionType, ListExecutionsResponse, DEFAULT_TIMEOUT, MAX_TIMEOUT, MAX_WAIT,
};
use crate::wire::time::{format_ms, now_ms};
use crate::wire::{EventType, StreamEvent};

/// The most bytes of `code`, and of `event` as JSON.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// The most bytes of stdout (and of stderr) kept.
pub const MAX_OUTPUT: usize = 1 << 20;
/// How long after its deadline an interrupted run has to end before it is `TimedOut`.
pub const GRACE: Duration = Duration::from_secs(2);
/// How often finished executions past their retention are deleted.
const PURGE_EVERY: Duration = Duration::from_secs(600);
/// The most bytes of events kept in memory for `/events` of a running execution.
const MAX_LOG_BYTES: usize = 4 << 20;

/// Settings of executions.
#[derive(Debug, Clone)]
pub struct ExecutionSettings {
    /// How long finished executions are kept.
    pub retention: Duration,
    /// The most executions kept; beyond, the oldest finished go.
    pub max_stored: u64,
    /// How long execd and the runtime must both say a sandbox is gone before its running
    /// executions are `Lost`.
    pub lost_after: Duration,
    /// The most executions a non-admin user may have running or waiting (queued batch jobs
    /// count; a batch submit itself is not refused by it).
    pub max_running_per_user: u64,
}

impl Default for ExecutionSettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(24 * 3600),
            max_stored: 100_000,
            lost_after: Duration::from_secs(15),
            max_running_per_user: 20,
        }
    }
}

/// The list filter of `GET /executions`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutionQuery {
    /// Only this sandbox's.
    pub sandbox_id: Option<String>,
    /// Only this batch's.
    pub batch_id: Option<String>,
    /// Only in this state.
    pub state: Option<ExecutionState>,
    /// 1-based page.
    pub page: u32,
    /// Items per page (1–200).
    pub page_size: u32,
}

/// One event of `/executions/{id}/events`: sandboxd's own id (1, 2, 3… per execution) and
/// the event.
pub type NumberedEvent = (u64, StreamEvent);

/// What the process knows of its running executions beyond the store.
#[derive(Default)]
pub(super) struct Executions {
    /// By execution id; a std `Mutex`, never held across an `.await`.
    live: Mutex<HashMap<String, Arc<Live>>>,
}

/// One execution this process runs (or will, for a queued batch job).
pub(super) struct Live {
    /// Its events so far, for `/events`.
    log: Mutex<EventLog>,
    /// The state, and a tick for every event appended: watchers wake on either.
    changed: watch::Sender<(ExecutionState, u64)>,
    /// Cancelled by a delete; the run interrupts execd and ends `Cancelled`. (A token, not a
    /// `watch<bool>`: a cancel between the run's first look and its wait is not missed.)
    cancel: tokio_util::sync::CancellationToken,
    /// The row as stored at the end, so a waiting submit answers without reading it back.
    settled: Mutex<Option<ExecutionRow>>,
}

#[derive(Default)]
struct EventLog {
    events: Vec<NumberedEvent>,
    bytes: usize,
    /// Output events were dropped from the log (over [`MAX_LOG_BYTES`]).
    dropped: bool,
}

impl Live {
    fn new(state: ExecutionState) -> Arc<Self> {
        Arc::new(Self {
            log: Mutex::new(EventLog::default()),
            changed: watch::Sender::new((state, 0)),
            cancel: tokio_util::sync::CancellationToken::new(),
            settled: Mutex::new(None),
        })
    }

    fn log(&self) -> std::sync::MutexGuard<'_, EventLog> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an event (numbered here) and wakes watchers. Output past the memory budget is
    /// left out of the log (the stored output still has its first MiB).
    fn push(&self, event: StreamEvent) {
        let size = event.text.as_ref().map_or(0, String::len) + 64;
        {
            let mut log = self.log();
            let output = matches!(event.kind, EventType::Stdout | EventType::Stderr);
            if output && log.bytes + size > MAX_LOG_BYTES {
                log.dropped = true;
                return;
            }
            log.bytes += size;
            let id = log.events.len() as u64 + 1;
            log.events.push((id, event));
        }
        self.changed.send_modify(|(_, tick)| *tick += 1);
    }

    fn set_state(&self, state: ExecutionState) {
        self.changed.send_modify(|(s, _)| *s = state);
    }

    /// The events after `after`.
    fn events_after(&self, after: u64) -> Vec<NumberedEvent> {
        let log = self.log();
        log.events.iter().filter(|(id, _)| *id > after).cloned().collect()
    }
}

impl Executions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Live>>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, id: &str, state: ExecutionState) -> Arc<Live> {
        let live = Live::new(state);
        self.lock().insert(id.to_owned(), live.clone());
        live
    }

    fn get(&self, id: &str) -> Option<Arc<Live>> {
        self.lock().get(id).cloned()
    }

    fn finish(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// An execution request, checked: what runs, and how.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Job {
    pub kind: ExecutionType,
    pub language: Option<Language>,
    pub payload: Payload,
    pub timeout: u64,
    pub envs: Option<std::collections::BTreeMap<String, String>>,
    pub cwd: Option<String>,
    /// Run inside an execd isolated session (commands and handlers).
    pub isolated: bool,
}

/// What a job runs.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Payload {
    Handler {
        code: String,
        handler: String,
        event: serde_json::Value,
    },
    Code {
        code: String,
        context_id: Option<String>,
    },
    Shell(String),
    Argv(Vec<String>),
}

/// Checks `req` as §12.3 says; `one_shot` allows the template fields.
pub(super) fn validate(req: &ExecutionRequest, one_shot: bool) -> Result<Job, Error> {
    let given = [req.code.is_some(), req.command.is_some(), req.argv.is_some()]
        .iter()
        .filter(|g| **g)
        .count();
    if given != 1 {
        return Err(Error::invalid(format!(
            "exactly one of code, command and argv is required, got {given}"
        )));
    }
    if !one_shot && (req.template_id.is_some() || req.template_version.is_some() || req.pool_ref.is_some()) {
        return Err(Error::invalid(
            "templateId, templateVersion and poolRef belong to one-shot executions (POST /v1/executions)",
        ));
    }
    let inferred = if req.command.is_some() || req.argv.is_some() {
        ExecutionType::Command
    } else if req.handler.is_some() || req.event.is_some() {
        ExecutionType::Handler
    } else {
        ExecutionType::Code
    };
    let kind = req.kind.unwrap_or(inferred);
    if kind != inferred && !(kind == ExecutionType::Handler && inferred == ExecutionType::Code) {
        return Err(Error::invalid(format!(
            "type {} contradicts the request, which gives {}",
            kind.as_str(),
            if req.code.is_some() { "code" } else { "a command" }
        )));
    }
    if kind == ExecutionType::Code && req.event.is_some() {
        return Err(Error::invalid("event belongs to handlers, not to type code"));
    }
    if req.context_id.is_some() && kind != ExecutionType::Code {
        return Err(Error::invalid("contextId belongs to type code"));
    }
    if kind == ExecutionType::Command && (req.language.is_some() || req.handler.is_some()) {
        return Err(Error::invalid("language and handler do not apply to commands"));
    }
    let timeout = req.timeout.unwrap_or(DEFAULT_TIMEOUT);
    if !(1..=MAX_TIMEOUT).contains(&timeout) {
        return Err(Error::invalid(format!(
            "timeout must be between 1 and {MAX_TIMEOUT} seconds, got {timeout}"
        )));
    }
    let language = match kind {
        ExecutionType::Command => None,
        _ => {
            let name = req.language.as_deref().unwrap_or("python");
            Some(Language::parse(name).ok_or_else(|| {
                Error::UnsupportedLanguage(format!("language must be python or javascript, got {name:?}"))
            })?)
        }
    };
    if let Some(code) = &req.code {
        if code.len() > MAX_PAYLOAD {
            return Err(Error::TooLarge { limit: MAX_PAYLOAD });
        }
    }
    if let Some(cwd) = &req.cwd {
        if cwd.is_empty() || cwd.contains('\0') {
            return Err(Error::invalid("cwd must be a non-empty path"));
        }
    }
    if let Some(envs) = &req.envs {
        if let Some(bad) = envs
            .keys()
            .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
        {
            return Err(Error::invalid(format!("envs: {bad:?} is not a variable name")));
        }
    }
    let isolated = req.isolated == Some(true);
    if isolated && kind == ExecutionType::Code {
        return Err(Error::invalid(
            "isolated applies to commands and handlers: code runs in a code context, which an isolated session has not",
        ));
    }
    let payload = match kind {
        ExecutionType::Command => match (&req.command, &req.argv) {
            (Some(command), None) if !command.trim().is_empty() => Payload::Shell(command.clone()),
            (None, Some(argv)) if argv.first().is_some_and(|p| !p.is_empty()) => Payload::Argv(argv.clone()),
            _ => {
                return Err(Error::invalid(
                    "command must not be empty, nor argv or its program",
                ))
            }
        },
        ExecutionType::Handler => {
            let handler = req.handler.clone().unwrap_or_else(|| "handler".into());
            if !is_identifier(&handler) {
                return Err(Error::invalid(format!(
                    "handler must match [A-Za-z_][A-Za-z0-9_]*, got {handler:?}"
                )));
            }
            let event = req.event.clone().unwrap_or(serde_json::Value::Null);
            if serde_json::to_vec(&event).map_or(usize::MAX, |v| v.len()) > MAX_PAYLOAD {
                return Err(Error::TooLarge { limit: MAX_PAYLOAD });
            }
            Payload::Handler {
                code: req.code.clone().unwrap_or_default(),
                handler,
                event,
            }
        }
        ExecutionType::Code => Payload::Code {
            code: req.code.clone().unwrap_or_default(),
            context_id: req.context_id.clone(),
        },
    };
    Ok(Job {
        kind,
        language,
        payload,
        timeout,
        envs: req.envs.clone(),
        cwd: req.cwd.clone(),
        isolated,
    })
}

/// Whether `record`'s sandbox was made with execd's isolated sessions enabled
/// (`extensions["bootstrap.execd.isolation"] = "enable"`).
pub(super) fn isolation_enabled(record: &Record) -> bool {
    record
        .extensions
        .get(crate::orchestrator::spec::ISOLATION_EXTENSION)
        .is_some_and(|v| v == "enable")
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

/// `?wait=` in seconds, checked.
pub fn wait_seconds(text: &str) -> Result<Duration, Error> {
    let secs: f64 = text
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && (0.0..=MAX_WAIT as f64).contains(s))
        .ok_or_else(|| Error::invalid(format!("wait must be 0–{MAX_WAIT} seconds, got {text:?}")))?;
    Ok(Duration::from_secs_f64(secs))
}

/// A fresh row for `job`.
fn new_row(
    id: String,
    owner: &str,
    sandbox_id: Option<String>,
    job: &Job,
    state: ExecutionState,
) -> ExecutionRow {
    let now = now_ms();
    ExecutionRow {
        id,
        owner: owner.to_owned(),
        sandbox_id,
        batch: None,
        kind: job.kind,
        language: job.language.map(|l| l.as_str().to_owned()),
        handler: match &job.payload {
            Payload::Handler { handler, .. } => Some(handler.clone()),
            _ => None,
        },
        state,
        reason: None,
        message: None,
        exit_code: None,
        duration_ms: None,
        timeout: job.timeout,
        created_at: now,
        started_at: None,
        finished_at: None,
        transition_at: now,
        deadline_at: None,
        execd_ref: None,
        last_event_id: 0,
        output: ExecutionOutput::default(),
        one_shot: false,
    }
}

fn new_id() -> String {
    format!("exec-{}", uuid::Uuid::new_v4())
}

impl Service {
    /// The sandbox `id` if the caller may see it and it runs (by its record: a paused,
    /// starting or failed sandbox is 409, and is not resumed).
    async fn running_sandbox(&self, id: &str, caller: &Principal) -> Result<Record, Error> {
        let record = self.owned(id, caller).await?;
        let state = match record.phase {
            _ if record.failure.is_some() => Some("Failed"),
            Phase::Pending | Phase::PreStart | Phase::Probing | Phase::AwaitingStart => Some("Pending"),
            Phase::Paused | Phase::Hibernated => Some("Paused"),
            Phase::Committing => Some("Pausing"),
            Phase::Restoring => Some("Resuming"),
            Phase::Released => Some("Terminated"),
            Phase::Ready => None,
        };
        if let Some(state) = state {
            return Err(Error::Conflict(Conflict::NotRunning {
                id: id.to_owned(),
                state: state.to_owned(),
            }));
        }
        Ok(record)
    }

    /// 429 when a non-admin caller has as many executions running or waiting as allowed.
    async fn check_running_quota(&self, caller: &Principal) -> Result<(), Error> {
        if caller.role == Role::Admin {
            return Ok(());
        }
        let limit = self.settings.executions.max_running_per_user;
        if self.store.count_active_executions(&caller.id).await? >= limit {
            return Err(Error::RateLimited {
                class: crate::orchestrator::ratelimit::Class::Exec,
                retry_after: 1,
            });
        }
        Ok(())
    }

    /// `POST /sandboxes/{id}/executions`: stores the execution `Queued` and starts it; with
    /// `wait`, answers once it ended or `wait` passed, whichever is first (the flag: ended).
    pub async fn submit_execution(
        self: &Arc<Self>,
        sandbox_id: &str,
        req: ExecutionRequest,
        wait: Option<Duration>,
        caller: &Principal,
    ) -> Result<(Execution, bool), Error> {
        caller.require(Perm::Write)?;
        let job = validate(&req, false)?;
        let record = self.running_sandbox(sandbox_id, caller).await?;
        if job.isolated && !isolation_enabled(&record) {
            return Err(Error::Conflict(Conflict::IsolationUnavailable));
        }
        self.check_running_quota(caller).await?;
        let row = new_row(
            new_id(),
            &caller.id,
            Some(record.id.clone()),
            &job,
            ExecutionState::Queued,
        );
        self.store.insert_execution(&row).await?;
        let live = self.executions.register(&row.id, row.state);
        let id = row.id.clone();
        tracing::info!(execution = %id, sandbox = sandbox_id, kind = job.kind.as_str(), "execution submitted");
        let service = self.clone();
        tokio::spawn(async move { service.run(row, job, record, live, None).await });
        self.answer(&id, wait, caller).await
    }

    /// `POST /executions` (one-shot): a sandbox for this execution alone — acquired from the
    /// pool `poolRef` (at once: no idle member is 429 `POOL::CAPACITY_EXHAUSTED` with
    /// `Retry-After`) and released after the run, or made from `templateId` (`Acquiring`
    /// meanwhile) and deleted after it.
    pub async fn submit_one_shot(
        self: &Arc<Self>,
        req: ExecutionRequest,
        wait: Option<Duration>,
        caller: &Principal,
    ) -> Result<(Execution, bool), Error> {
        caller.require(Perm::Write)?;
        let job = validate(&req, true)?;
        if req.pool_ref.is_some() && req.template_id.is_some() {
            return Err(Error::invalid("give templateId or poolRef, not both"));
        }
        if let Some(pool_ref) = &req.pool_ref {
            let pool = match pool_ref {
                serde_json::Value::String(name) => name.clone(),
                serde_json::Value::Object(o) => match o.get("name") {
                    Some(serde_json::Value::String(name)) => name.clone(),
                    _ => return Err(Error::invalid("poolRef must be a pool name, or {\"name\": …}")),
                },
                _ => return Err(Error::invalid("poolRef must be a pool name, or {\"name\": …}")),
            };
            return self.submit_pooled(&pool, job, wait, caller).await;
        }
        let Some(template_id) = req.template_id.clone() else {
            return Err(Error::invalid(
                "a one-shot execution needs templateId or poolRef; to run in a sandbox of yours, \
                 POST /v1/sandboxes/{id}/executions",
            ));
        };
        // A template the caller cannot read is not found before anything is stored.
        self.readable_template(&template_id, caller).await?;
        self.check_running_quota(caller).await?;
        let mut row = new_row(new_id(), &caller.id, None, &job, ExecutionState::Acquiring);
        row.one_shot = true;
        self.store.insert_execution(&row).await?;
        let live = self.executions.register(&row.id, row.state);
        let id = row.id.clone();
        let service = self.clone();
        let owner = caller.clone();
        let version = req.template_version;
        tokio::spawn(async move {
            service
                .run_one_shot(row, job, template_id, version, owner, live)
                .await
        });
        self.answer(&id, wait, caller).await
    }

    /// A one-shot from pool `pool`: acquired now, released after the run.
    async fn submit_pooled(
        self: &Arc<Self>,
        pool: &str,
        job: Job,
        wait: Option<Duration>,
        caller: &Principal,
    ) -> Result<(Execution, bool), Error> {
        self.check_running_quota(caller).await?;
        let id = new_id();
        let acquire = crate::wire::pools::AcquireRequest {
            metadata: Some([("sandboxd.execution".to_owned(), id.clone())].into()),
            ..Default::default()
        };
        let sandbox = self.acquire_from_pool(pool, acquire, caller).await?;
        let record = self.record(&sandbox.id).await?;
        let mut row = new_row(
            id.clone(),
            &caller.id,
            Some(sandbox.id.clone()),
            &job,
            ExecutionState::Queued,
        );
        row.one_shot = true;
        if let Err(e) = self.store.insert_execution(&row).await {
            self.discard_one_shot(&row).await;
            return Err(e.into());
        }
        let live = self.executions.register(&row.id, row.state);
        tracing::info!(execution = %id, pool, sandbox = %sandbox.id, "one-shot execution acquired a pool member");
        let service = self.clone();
        tokio::spawn(async move {
            let mut row = row;
            service.run_in(&mut row, &job, record, &live, None).await;
            service.discard_one_shot(&row).await;
            service.executions.finish(&row.id);
        });
        self.answer(&id, wait, caller).await
    }

    /// The execution after waiting at most `wait` for its end; with its output when it ended.
    async fn answer(
        &self,
        id: &str,
        wait: Option<Duration>,
        caller: &Principal,
    ) -> Result<(Execution, bool), Error> {
        let row = match wait {
            Some(wait) if !wait.is_zero() => self.wait_for_end(id, wait).await?,
            _ => self.owned_execution(id, caller).await?,
        };
        let ended = row.state.is_terminal();
        let mut view = execution(&row);
        if ended {
            view.output = Some(row.output);
        }
        Ok((view, ended))
    }

    /// The row once the execution ended or `wait` passed.
    async fn wait_for_end(&self, id: &str, wait: Duration) -> Result<ExecutionRow, Error> {
        if let Some(live) = self.executions.get(id) {
            let mut rx = live.changed.subscribe();
            let _ = tokio::time::timeout(wait, rx.wait_for(|(s, _)| s.is_terminal())).await;
            let settled = live.settled.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(row) = settled {
                return Ok(row);
            }
        }
        self.store
            .execution(id)
            .await?
            .ok_or_else(|| Error::not_found(Kind::Execution, id))
    }

    /// `GET /executions/{id}` (and `/status`).
    pub async fn execution(&self, id: &str, caller: &Principal) -> Result<Execution, Error> {
        caller.require(Perm::Read)?;
        Ok(execution(&self.owned_execution(id, caller).await?))
    }

    /// `GET /executions/{id}/result?wait=`: the result once ended, else (after `wait`) 409
    /// `EXECUTION::NOT_FINISHED` naming the state.
    pub async fn execution_result(
        &self,
        id: &str,
        wait: Option<Duration>,
        caller: &Principal,
    ) -> Result<ExecutionResult, Error> {
        caller.require(Perm::Read)?;
        let mut row = self.owned_execution(id, caller).await?;
        if let Some(wait) = wait.filter(|w| !w.is_zero() && !row.state.is_terminal()) {
            row = self.wait_for_end(id, wait).await?;
        }
        if !row.state.is_terminal() {
            return Err(Error::Conflict(Conflict::ExecutionNotFinished {
                id: id.to_owned(),
                state: row.state.as_str().to_owned(),
            }));
        }
        Ok(ExecutionResult {
            id: row.id.clone(),
            status: status(&row),
            exit_code: row.exit_code,
            duration_ms: row.duration_ms,
            output: row.output,
        })
    }

    /// `GET /executions?sandboxId=&batchId=&state=`: the caller's (an admin's: everyone's).
    pub async fn list_executions(
        &self,
        query: ExecutionQuery,
        caller: &Principal,
    ) -> Result<ListExecutionsResponse, Error> {
        caller.require(Perm::Read)?;
        let filter = ExecutionFilter {
            sandbox_id: query.sandbox_id,
            batch_id: query.batch_id,
            state: query.state,
            owner: (caller.role != Role::Admin).then(|| caller.id.clone()),
            page: query.page.max(1),
            page_size: query.page_size.clamp(1, 200),
        };
        let (rows, total) = self.store.executions(&filter).await?;
        Ok(ListExecutionsResponse {
            items: rows.iter().map(execution).collect(),
            pagination: super::page_of(filter.page, filter.page_size, total),
        })
    }

    /// `DELETE /executions/{id}`: asks the run to stop (execd interrupts it; it ends
    /// `Cancelled`). 409 when it has ended.
    pub async fn cancel_execution(&self, id: &str, caller: &Principal) -> Result<Execution, Error> {
        caller.require(Perm::Write)?;
        let row = self.owned_execution(id, caller).await?;
        let finished = || {
            Error::Conflict(Conflict::ExecutionFinished {
                id: id.to_owned(),
                state: row.state.as_str().to_owned(),
            })
        };
        if row.state.is_terminal() {
            return Err(finished());
        }
        match self.executions.get(id) {
            Some(live) => {
                live.cancel.cancel();
                tracing::info!(execution = id, "execution cancel requested");
            }
            // Unfinished but run by no task of this process: nothing can end it otherwise.
            None => {
                let mut row = row.clone();
                let now = now_ms();
                row.state = ExecutionState::Cancelled;
                row.reason = Some(crate::wire::errors::EXECUTION_CANCELLED.code.to_owned());
                row.message = Some("cancelled by a delete".into());
                row.finished_at = Some(now);
                row.transition_at = now;
                self.store.update_execution(&row).await?;
            }
        }
        Ok(execution(&self.owned_execution(id, caller).await?))
    }

    /// `GET /executions/{id}/events`: the events after `after` (a `Last-Event-ID`), then live
    /// until the end. A finished execution's are replayed from what was stored.
    pub async fn watch_execution(
        &self,
        id: &str,
        after: u64,
        caller: &Principal,
    ) -> Result<BoxStream<'static, NumberedEvent>, Error> {
        caller.require(Perm::Read)?;
        let row = self.owned_execution(id, caller).await?;
        let Some(live) = self.executions.get(id).filter(|_| !row.state.is_terminal()) else {
            let events: Vec<_> = stored_events(&row)
                .into_iter()
                .filter(|(n, _)| *n > after)
                .collect();
            return Ok(futures_util::stream::iter(events).boxed());
        };
        let rx = live.changed.subscribe();
        Ok(futures_util::stream::unfold(
            (live, rx, after, Vec::<NumberedEvent>::new().into_iter(), false),
            |(live, mut rx, mut shown, mut pending, mut over)| async move {
                loop {
                    if let Some(next) = pending.next() {
                        shown = next.0;
                        if next.1.is_terminal() {
                            over = true;
                        }
                        return Some((next, (live, rx, shown, pending, over)));
                    }
                    if over {
                        return None;
                    }
                    rx.borrow_and_update();
                    let fresh = live.events_after(shown);
                    if !fresh.is_empty() {
                        pending = fresh.into_iter();
                        continue;
                    }
                    if rx.changed().await.is_err() {
                        // The run ended and its live entry went; whatever it logged was read.
                        let rest = live.events_after(shown);
                        if rest.is_empty() {
                            return None;
                        }
                        pending = rest.into_iter();
                        over = true;
                    }
                }
            },
        )
        .boxed())
    }

    /// The execution `id` if `caller` may see it.
    async fn owned_execution(&self, id: &str, caller: &Principal) -> Result<ExecutionRow, Error> {
        self.store
            .execution(id)
            .await?
            .filter(|r| caller.may_see(&r.owner))
            .ok_or_else(|| Error::not_found(Kind::Execution, id))
    }

    /// Deletes finished executions past the retention time (and beyond `max_stored`), every
    /// 10 minutes. Runs until the process ends.
    pub async fn run_execution_housekeeping(&self) {
        let mut tick = tokio::time::interval(PURGE_EVERY);
        loop {
            tick.tick().await;
            let settings = &self.settings.executions;
            let before = now_ms() - i64::try_from(settings.retention.as_millis()).unwrap_or(i64::MAX);
            match self.store.purge_executions(before, settings.max_stored).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(executions = n, "old executions deleted"),
                Err(e) => tracing::warn!(error = %e, "cannot delete old executions"),
            }
        }
    }
}

/// The status of a stored execution.
fn status(row: &ExecutionRow) -> ExecutionStatus {
    ExecutionStatus {
        state: row.state,
        reason: row.reason.clone(),
        message: row.message.clone(),
        last_transition_at: format_ms(row.transition_at),
    }
}

/// The wire view of a stored execution (without its output).
pub(super) fn execution(row: &ExecutionRow) -> Execution {
    Execution {
        id: row.id.clone(),
        sandbox_id: row.sandbox_id.clone(),
        batch_id: row.batch.as_ref().map(|b| b.batch_id.clone()),
        job_id: row.batch.as_ref().map(|b| b.job_id.clone()),
        kind: row.kind,
        language: row.language.clone(),
        status: status(row),
        exit_code: row.exit_code,
        duration_ms: row.duration_ms,
        timeout: row.timeout,
        created_at: format_ms(row.created_at),
        started_at: row.started_at.map(format_ms),
        finished_at: row.finished_at.map(format_ms),
        output: None,
    }
}

/// The events of a finished execution, from what was stored: `init`, the output a line an
/// event, the result, and the terminal event.
fn stored_events(row: &ExecutionRow) -> Vec<NumberedEvent> {
    let at = row.finished_at.unwrap_or(row.transition_at);
    let mut events = vec![StreamEvent::init(
        &row.id,
        row.started_at.unwrap_or(row.created_at),
    )];
    let lines = |text: &str, kind: EventType, events: &mut Vec<StreamEvent>| {
        for line in text.lines() {
            events.push(StreamEvent {
                text: Some(if line.is_empty() {
                    "\n".into()
                } else {
                    line.to_owned()
                }),
                ..StreamEvent::new(kind, at)
            });
        }
    };
    lines(&row.output.stdout, EventType::Stdout, &mut events);
    lines(&row.output.stderr, EventType::Stderr, &mut events);
    if let Some(result) = run::result_event(&row.output, at) {
        events.push(result);
    }
    if let Some(terminal) = run::terminal_event(row, at) {
        events.push(terminal);
    }
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| (i as u64 + 1, e))
        .collect()
}

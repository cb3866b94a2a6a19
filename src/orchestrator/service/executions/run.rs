//! One execution's run, owned by the task that `submit_*`, a batch or recovery started:
//! start it through execd (a handler's files uploaded first), consume execd's event stream
//! (following the command's journal again from the last event id when the stream drops), stop
//! it at its deadline or on a cancel (execd interrupts the process group; a 2 s grace), and
//! settle the outcome into the stored row. The row's output and last event id are persisted
//! together at most every 500 ms, so a sandboxd restarted mid-run resumes exactly after what
//! was stored.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::time::Instant;

use super::runner::{self, Language};
use super::{Job, Live, Payload, GRACE, MAX_OUTPUT};
use crate::orchestrator::auth::Principal;
use crate::orchestrator::execd_client::{EventStream, ExecdError, Ping, SseItem};
use crate::orchestrator::runtime::{Observed, RuntimeError, Target, EXECD_PORT};
use crate::orchestrator::service::Service;
use crate::orchestrator::store::{ExecutionRow, Record};
use crate::wire::code::{ContextRef, RunCodeRequest};
use crate::wire::errors::{self as codes, ErrorCode};
use crate::wire::executions::{ExecutionError, ExecutionOutput, ExecutionState, ExecutionType};
use crate::wire::isolated::{
    CreateIsolatedSessionRequest, IsolatedOverlaySpec, IsolatedRunRequest, MountMode,
};
use crate::wire::lifecycle::CreateSandboxRequest;
use crate::wire::time::{format_ms, now_ms};
use crate::wire::{ErrorDetail, EventType, RunCommandRequest, StreamEvent};

/// Output and the last event id are persisted at most this often.
const PERSIST_EVERY: Duration = Duration::from_millis(500);
/// A stream silent this long (execd sends a keep-alive every few seconds) is reopened.
const STALL: Duration = Duration::from_secs(10);
/// Pause between attempts to reach a sandbox whose stream dropped.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// execd's own time limit on a command sandboxd starts, beyond the execution's deadline: it
/// ends the run should sandboxd not be there to interrupt it.
const BACKSTOP: Duration = Duration::from_secs(10);

/// The prefix of an isolated run's `execd_ref`, before its session id.
const ISOLATED_REF: &str = "isolated:";

/// The isolated session `row` runs in, if it does.
fn isolated_session(row: &ExecutionRow) -> Option<&str> {
    row.execd_ref.as_deref()?.strip_prefix(ISOLATED_REF)
}

/// `words` as one POSIX shell line, each single-quoted.
fn shell_words(words: &[String]) -> String {
    let quoted: Vec<String> = words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', r"'\''")))
        .collect();
    quoted.join(" ")
}

/// How consuming a run's events ended.
#[derive(Debug)]
pub(super) enum Ending {
    /// execd's terminal event: `execution_complete` (`None`) or `error`.
    Ended(Option<ErrorDetail>),
    /// Interrupted at the deadline.
    TimedOut,
    /// Interrupted by a cancel.
    Cancelled,
    /// execd and the runtime both said the sandbox is gone (or the run cannot be followed).
    Lost(String),
    /// execd refused the run, or failed it.
    Failed(String),
}

/// The execd side of a sandbox, for one run.
pub(super) struct Sandbox {
    pub record: Record,
    pub target: Target,
}

impl Service {
    /// Runs `row` (stored `Queued`) in `record`'s sandbox to its end, then forgets it.
    /// `context` is a batch's code context.
    pub(super) async fn run(
        self: Arc<Self>,
        mut row: ExecutionRow,
        job: Job,
        record: Record,
        live: Arc<Live>,
        context: Option<String>,
    ) {
        self.run_in(&mut row, &job, record, &live, context).await;
        self.executions.finish(&row.id);
    }

    /// A one-shot run: a sandbox from the template (`Acquiring`), the run, and the sandbox's
    /// delete.
    pub(super) async fn run_one_shot(
        self: Arc<Self>,
        mut row: ExecutionRow,
        job: Job,
        template_id: String,
        template_version: Option<u32>,
        owner: Principal,
        live: Arc<Live>,
    ) {
        let request = CreateSandboxRequest {
            template_id: Some(template_id),
            template_version,
            metadata: Some([("sandboxd.execution".to_owned(), row.id.clone())].into()),
            ..Default::default()
        };
        let created = self.create(request, &owner, None).await;
        match created {
            Ok(sandbox) => {
                row.sandbox_id = Some(sandbox.id.clone());
                row.state = ExecutionState::Queued;
                self.save(&row).await;
                match self.record(&sandbox.id).await {
                    Ok(record) => self.run_in(&mut row, &job, record, &live, None).await,
                    Err(e) => {
                        let message = format!("the sandbox made for it vanished: {e}");
                        self.settle_execution(
                            &mut row,
                            &live,
                            outcome_of(&codes::EXECUTION_SANDBOX_FAILED, message),
                        )
                        .await;
                    }
                }
                self.discard_one_shot(&row).await;
            }
            Err(e) => {
                tracing::warn!(execution = %row.id, error = %e, "one-shot sandbox failed");
                let message = if e.is_client_error() {
                    format!("cannot make its sandbox: {e}")
                } else {
                    "cannot make its sandbox; sandboxd's log has the details".to_owned()
                };
                self.settle_execution(
                    &mut row,
                    &live,
                    outcome_of(&codes::EXECUTION_SANDBOX_FAILED, message),
                )
                .await;
            }
        }
        self.executions.finish(&row.id);
    }

    /// Gives a one-shot execution's sandbox back: released to its pool, or deleted.
    pub(super) async fn discard_one_shot(&self, row: &ExecutionRow) {
        let (true, Some(id)) = (row.one_shot, &row.sandbox_id) else {
            return;
        };
        let pooled = matches!(self.store.get(id).await, Ok(Some(r)) if r.pool.is_some());
        let done = if pooled {
            self.release(id, &Principal::root()).await
        } else {
            self.delete(id, &Principal::root()).await
        };
        if let Err(e) = done {
            tracing::warn!(execution = %row.id, sandbox = %id, pooled, error = %e, "cannot give back a one-shot sandbox");
        }
    }

    /// Starts `job` and follows it to its settled end (the row stored, watchers told).
    pub(super) async fn run_in(
        &self,
        row: &mut ExecutionRow,
        job: &Job,
        record: Record,
        live: &Live,
        context: Option<String>,
    ) {
        if live.cancel.is_cancelled() {
            return self
                .settle_execution(row, live, outcome(row, Ending::Cancelled))
                .await;
        }
        let Some(target) = record
            .instance
            .as_ref()
            .and_then(|i| self.runtime.target(i, EXECD_PORT))
        else {
            let message = format!("sandbox {} is not running", record.id);
            return self
                .settle_execution(row, live, outcome(row, Ending::Lost(message)))
                .await;
        };
        if job.isolated && !super::isolation_enabled(&record) {
            let o = outcome_of(
                &codes::EXECUTION_ISOLATION_UNAVAILABLE,
                crate::orchestrator::error::Conflict::IsolationUnavailable.to_string(),
            );
            return self.settle_execution(row, live, o).await;
        }
        let sandbox = Sandbox { record, target };
        let now = now_ms();
        row.state = ExecutionState::Running;
        row.started_at = Some(now);
        row.transition_at = now;
        row.deadline_at = Some(now + i64::try_from(job.timeout).unwrap_or(i64::MAX / 2_000) * 1000);
        // Stored with execd's id once its `init` arrives (one store round trip, not two).
        live.set_state(ExecutionState::Running);
        let stream = match self.start(row, job, &sandbox, context).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(execution = %row.id, error = %e, "execd did not start the run");
                self.end_isolated_session(row, &sandbox).await;
                let ending = match e {
                    ExecdError::Refused { message, .. } => Ending::Failed(message),
                    other if self.executor_gone(&sandbox).await => {
                        Ending::Lost(format!("the sandbox is gone: {other}"))
                    }
                    other => Ending::Failed(other.to_string()),
                };
                return self.settle_execution(row, live, outcome(row, ending)).await;
            }
        };
        self.follow(row, live, &sandbox, Some(stream)).await;
    }

    /// Consumes the run's events (from `stream`, else by following its journal again) and
    /// settles it.
    pub(super) async fn follow(
        &self,
        row: &mut ExecutionRow,
        live: &Live,
        sandbox: &Sandbox,
        stream: Option<EventStream>,
    ) {
        let ending = self.consume(row, live, sandbox, stream).await;
        let settled = match (row.kind, ending) {
            (ExecutionType::Handler, Ending::Ended(error)) => self.handler_outcome(row, sandbox, error).await,
            (_, ending) => outcome(row, ending),
        };
        self.settle_execution(row, live, settled).await;
        let isolated = isolated_session(row).is_some();
        self.end_isolated_session(row, sandbox).await;
        if row.kind == ExecutionType::Handler || isolated {
            let dir = runner::dir(&row.id);
            if let Err(e) = self
                .execd
                .remove_dir(&sandbox.target, &sandbox.record.token, &dir)
                .await
            {
                tracing::debug!(execution = %row.id, error = %e, "cannot remove the handler's directory");
            }
        }
    }

    /// Asks execd to start the run.
    async fn start(
        &self,
        row: &mut ExecutionRow,
        job: &Job,
        sandbox: &Sandbox,
        context: Option<String>,
    ) -> Result<EventStream, ExecdError> {
        if job.isolated {
            return self.start_isolated(row, job, sandbox).await;
        }
        let (target, token) = (&sandbox.target, sandbox.record.token.as_str());
        let backstop = i64::try_from((Duration::from_secs(job.timeout) + GRACE + BACKSTOP).as_millis())
            .unwrap_or(i64::MAX);
        let command = |command: Option<String>, argv: Option<Vec<String>>| RunCommandRequest {
            command,
            argv,
            cwd: job.cwd.clone(),
            envs: job.envs.clone(),
            timeout: Some(backstop),
            ..Default::default()
        };
        match &job.payload {
            Payload::Shell(text) => {
                self.execd
                    .start_command(target, token, &command(Some(text.clone()), None))
                    .await
            }
            Payload::Argv(argv) => {
                self.execd
                    .start_command(target, token, &command(None, Some(argv.clone())))
                    .await
            }
            Payload::Handler { .. } => {
                let argv = self.upload_handler(row, job, sandbox).await?;
                self.execd
                    .start_command(target, token, &command(None, Some(argv)))
                    .await
            }
            Payload::Code { code, context_id } => {
                let request = RunCodeRequest {
                    context: Some(ContextRef {
                        id: context_id.clone().or(context),
                        language: Some(job.language.unwrap_or(Language::Python).as_str().to_owned()),
                    }),
                    code: code.clone(),
                };
                self.execd.run_code(target, token, &request).await
            }
        }
    }

    /// Uploads a handler's code and event into its directory; the runner's argv.
    async fn upload_handler(
        &self,
        row: &ExecutionRow,
        job: &Job,
        sandbox: &Sandbox,
    ) -> Result<Vec<String>, ExecdError> {
        let Payload::Handler { code, handler, event } = &job.payload else {
            return Err(ExecdError::Broken("not a handler".into()));
        };
        let language = job.language.unwrap_or(Language::Python);
        let dir = runner::dir(&row.id);
        let event = serde_json::to_vec(event).unwrap_or_else(|_| b"null".to_vec());
        self.execd
            .upload(
                &sandbox.target,
                &sandbox.record.token,
                &[
                    (format!("{dir}/{}", language.file()), code.clone().into_bytes()),
                    (format!("{dir}/event.json"), event),
                ],
            )
            .await?;
        let deadline = format_ms(row.deadline_at.unwrap_or_default());
        Ok(language.argv(&dir, handler, &row.id, &sandbox.record.id, &deadline))
    }

    /// Starts the run inside a fresh execd isolated session (`/v1/isolated`): the sandbox's
    /// filesystem read-only, a private `/tmp`, its own pid namespace and hostname, and the
    /// run's directory bound read-write (a handler's `result.json` reaches sandboxd through it). The session is stored as the run's
    /// `execd_ref` (deleted when the run ends, or to interrupt it). A foreground isolated run
    /// ends when its stream drops, so it is not followed again: a broken stream is `Lost`.
    async fn start_isolated(
        &self,
        row: &mut ExecutionRow,
        job: &Job,
        sandbox: &Sandbox,
    ) -> Result<EventStream, ExecdError> {
        let (target, token) = (&sandbox.target, sandbox.record.token.as_str());
        // The run's directory (a handler's files and result), bound read-write: the one place
        // it can write that outlives it until sandboxd removes the directory.
        let overlays = vec![IsolatedOverlaySpec {
            path: runner::dir(&row.id),
            mode: Some(MountMode::Rw),
            persist: None,
        }];
        let script = match &job.payload {
            Payload::Shell(text) => text.clone(),
            Payload::Argv(argv) => format!("exec {}", shell_words(argv)),
            Payload::Handler { .. } => format!(
                "exec {}",
                shell_words(&self.upload_handler(row, job, sandbox).await?)
            ),
            Payload::Code { .. } => return Err(ExecdError::Broken("code does not run isolated".into())),
        };
        let script = match &job.cwd {
            Some(cwd) => format!(
                "cd {} || exit 1\n{script}",
                shell_words(std::slice::from_ref(cwd))
            ),
            None => script,
        };
        let backstop = Duration::from_secs(job.timeout) + GRACE + BACKSTOP;
        let session = self
            .execd
            .create_isolated_session(
                target,
                token,
                &CreateIsolatedSessionRequest {
                    overlays: Some(overlays),
                    idle_timeout_seconds: i64::try_from(backstop.as_secs()).ok(),
                    ..Default::default()
                },
            )
            .await?;
        row.execd_ref = Some(format!("{ISOLATED_REF}{session}"));
        self.save(row).await;
        let run = IsolatedRunRequest {
            code: script,
            envs: job.envs.clone(),
            timeout_seconds: i64::try_from(backstop.as_secs()).ok(),
            background: None,
        };
        self.execd.run_isolated(target, token, &session, &run).await
    }

    /// Deletes the isolated session of `row`'s run, if it has one (its processes die).
    async fn end_isolated_session(&self, row: &ExecutionRow, sandbox: &Sandbox) {
        let Some(session) = isolated_session(row) else {
            return;
        };
        if let Err(e) = self
            .execd
            .delete_isolated_session(&sandbox.target, &sandbox.record.token, session)
            .await
        {
            tracing::debug!(execution = %row.id, error = %e, "cannot delete the isolated session");
        }
    }

    /// Reads events until the run's terminal one, its deadline (plus the grace), a cancel
    /// (plus the grace), or the sandbox's loss.
    async fn consume(
        &self,
        row: &mut ExecutionRow,
        live: &Live,
        sandbox: &Sandbox,
        mut stream: Option<EventStream>,
    ) -> Ending {
        let (target, token) = (&sandbox.target, sandbox.record.token.as_str());
        let left = row.deadline_at.unwrap_or(i64::MAX / 2) - now_ms();
        let deadline = Instant::now() + Duration::from_millis(u64::try_from(left).unwrap_or(0));
        let mut interrupted: Option<(Ending, Instant)> = None;
        // The first tick a period away: an interval's first tick is immediate, which would
        // store the row between a run's first events, in its critical path.
        let mut persist = tokio::time::interval_at(Instant::now() + PERSIST_EVERY, PERSIST_EVERY);
        persist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut dirty = false;
        let mut gone_since: Option<Instant> = None;
        loop {
            let Some(events) = stream.as_mut() else {
                if let Some((_, until)) = &interrupted {
                    if Instant::now() >= *until {
                        return interrupted.map(|(e, _)| e).unwrap_or(Ending::Cancelled);
                    }
                } else if Instant::now() >= deadline + GRACE {
                    return Ending::TimedOut;
                }
                if dirty {
                    self.save(row).await;
                    dirty = false;
                }
                let attempt = match (&row.execd_ref, row.kind) {
                    _ if isolated_session(row).is_some() => {
                        Err(ExecdError::Broken("an isolated run ends with its stream".into()))
                    }
                    (Some(id), ExecutionType::Command | ExecutionType::Handler) => {
                        self.execd
                            .follow_command(target, token, id, row.last_event_id)
                            .await
                    }
                    _ => Err(ExecdError::Broken("a code run cannot be followed again".into())),
                };
                match attempt {
                    Ok(s) => {
                        tracing::info!(execution = %row.id, after = row.last_event_id, "execution stream reopened");
                        stream = Some(s);
                        gone_since = None;
                        continue;
                    }
                    Err(ExecdError::Refused { status: 404, .. }) => {
                        return Ending::Lost("execd no longer knows the run (it restarted)".into());
                    }
                    Err(e) => {
                        if self.executor_gone(sandbox).await {
                            let since = *gone_since.get_or_insert_with(Instant::now);
                            if since.elapsed() >= self.settings.executions.lost_after {
                                return Ending::Lost(format!(
                                    "the sandbox's executor has been gone for {} s: {e}",
                                    self.settings.executions.lost_after.as_secs()
                                ));
                            }
                        } else {
                            gone_since = None;
                            if row.kind == ExecutionType::Code || isolated_session(row).is_some() {
                                // Not followed again; an interrupt already sent decides the end.
                                return match interrupted {
                                    Some((ending, _)) => ending,
                                    None => Ending::Lost(format!("the run's stream broke off: {e}")),
                                };
                            }
                        }
                    }
                }
                tokio::time::sleep(RETRY_EVERY).await;
                continue;
            };
            let grace = interrupted.as_ref().map(|(_, until)| *until);
            tokio::select! {
                biased;
                () = live.cancel.cancelled(), if interrupted.is_none() => {
                    self.interrupt(row, sandbox).await;
                    interrupted = Some((Ending::Cancelled, Instant::now() + GRACE));
                }
                () = tokio::time::sleep_until(deadline), if interrupted.is_none() => {
                    self.interrupt(row, sandbox).await;
                    interrupted = Some((Ending::TimedOut, Instant::now() + GRACE));
                }
                () = tokio::time::sleep_until(grace.unwrap_or(deadline)), if grace.is_some() => {
                    return interrupted.map(|(e, _)| e).unwrap_or(Ending::Cancelled);
                }
                _ = persist.tick(), if dirty => {
                    self.save(row).await;
                    dirty = false;
                }
                item = tokio::time::timeout(STALL, events.next()) => match item {
                    Ok(Some(Ok(SseItem::KeepAlive))) => {}
                    Ok(Some(Ok(SseItem::Event(id, event)))) => {
                        if let Some(id) = id {
                            if id <= row.last_event_id {
                                continue;
                            }
                            row.last_event_id = id;
                        }
                        dirty = true;
                        match event.kind {
                            EventType::Init => {
                                if row.execd_ref.is_none() {
                                    row.execd_ref = event.text.clone();
                                    // Stored at once: a restart re-attaches with it.
                                    self.save(row).await;
                                    dirty = false;
                                }
                                live.push(StreamEvent::init(&row.id, event.timestamp));
                            }
                            EventType::Stdout => {
                                let o = &mut row.output;
                                append(&mut o.stdout, &mut o.stdout_truncated, event.text.as_deref().unwrap_or(""));
                                live.push(event);
                            }
                            EventType::Stderr => {
                                let o = &mut row.output;
                                append(&mut o.stderr, &mut o.stderr_truncated, event.text.as_deref().unwrap_or(""));
                                live.push(event);
                            }
                            EventType::Result => {
                                if let Some(results) = &event.results {
                                    if let Some(text) = results.get("text").and_then(|t| t.as_str()) {
                                        row.output.text = Some(text.to_owned());
                                    }
                                    row.output.outputs.push(results.clone());
                                }
                                live.push(event);
                            }
                            EventType::ExecutionComplete | EventType::Error => {
                                if let Some((ending, _)) = interrupted {
                                    return ending;
                                }
                                return Ending::Ended(event.error);
                            }
                            EventType::Status | EventType::ExecutionCount | EventType::Ping => {}
                        }
                    }
                    Ok(Some(Err(e))) => {
                        tracing::info!(execution = %row.id, error = %e, "execution stream broke off");
                        stream = None;
                    }
                    Ok(None) => {
                        tracing::info!(execution = %row.id, "execution stream ended early");
                        stream = None;
                    }
                    Err(_) => {
                        tracing::info!(execution = %row.id, "execution stream stalled");
                        stream = None;
                    }
                },
            }
        }
    }

    /// Asks execd to interrupt the run (its process group, or its code cell).
    async fn interrupt(&self, row: &ExecutionRow, sandbox: &Sandbox) {
        if isolated_session(row).is_some() {
            return self.end_isolated_session(row, sandbox).await;
        }
        let Some(id) = &row.execd_ref else { return };
        if let Err(e) = self
            .execd
            .interrupt(&sandbox.target, &sandbox.record.token, id)
            .await
        {
            tracing::warn!(execution = %row.id, error = %e, "cannot interrupt the run");
        }
    }

    /// Whether execd's `/ping` and the runtime both say the sandbox is gone.
    async fn executor_gone(&self, sandbox: &Sandbox) -> bool {
        if self.execd.ping(&sandbox.target, &sandbox.record.token).await != Ping::NotYet {
            return false;
        }
        let Some(instance) = &sandbox.record.instance else {
            return true;
        };
        matches!(
            self.runtime.observe(instance).await,
            Ok(Observed::Exited { .. } | Observed::Gone) | Err(RuntimeError::NotFound(_))
        )
    }

    /// A handler's outcome: its `result.json`, or why there is none.
    async fn handler_outcome(
        &self,
        row: &ExecutionRow,
        sandbox: &Sandbox,
        error: Option<ErrorDetail>,
    ) -> Outcome {
        let exit = error.as_ref().map(exit_code);
        if exit == Some(127) {
            let interpreter = match row.language.as_deref().and_then(Language::parse) {
                Some(Language::JavaScript) => "node",
                _ => "python3",
            };
            let mut o = outcome_of(
                &codes::EXECUTION_RUNTIME_NOT_FOUND,
                format!("{interpreter} is not in the sandbox's image"),
            );
            o.exit_code = Some(127);
            return o;
        }
        let path = format!("{}/result.json", runner::dir(&row.id));
        let read = self
            .execd
            .download(&sandbox.target, &sandbox.record.token, &path, runner::MAX_RESULT)
            .await;
        let mut o = match read {
            Ok(Some(bytes)) => match runner::read_result(&bytes) {
                Ok(result) => Outcome {
                    state: ExecutionState::Succeeded,
                    result: Some(result),
                    ..Outcome::failed()
                },
                Err(error) => Outcome {
                    state: ExecutionState::Failed,
                    reason: Some(error.code.clone()),
                    message: error.message.clone(),
                    error: Some(error),
                    ..Outcome::failed()
                },
            },
            Err(ExecdError::TooLarge(_)) => outcome_of(
                &codes::EXECUTION_RESULT_TOO_LARGE,
                "the handler's result is larger than 10 MiB".into(),
            ),
            Ok(None) => {
                let tail = crate::orchestrator::execd_client::last_bytes(row.output.stderr.trim_end(), 2048);
                outcome_of(
                    &codes::EXECUTION_HANDLER_ERROR,
                    format!(
                        "the runner ended (exit code {}) without a result{}",
                        exit.unwrap_or(0),
                        if tail.is_empty() {
                            String::new()
                        } else {
                            format!(": {tail}")
                        }
                    ),
                )
            }
            Err(e) => outcome_of(
                &codes::EXECUTION_EXECUTOR_ERROR,
                format!("cannot read the handler's result: {e}"),
            ),
        };
        o.exit_code = Some(exit.unwrap_or(0));
        o
    }

    /// Records the end: the row (stored), the terminal event and state (for watchers).
    pub(super) async fn settle_execution(&self, row: &mut ExecutionRow, live: &Live, o: Outcome) {
        let now = now_ms();
        row.state = o.state;
        row.reason = o.reason;
        row.message = o.message;
        row.exit_code = o.exit_code.or(row.exit_code);
        row.output.error = o.error;
        if o.result.is_some() {
            row.output.result = o.result;
        }
        row.finished_at = Some(now);
        row.transition_at = now;
        row.duration_ms = row.started_at.map(|s| u64::try_from(now - s).unwrap_or(0));
        self.save(row).await;
        if let Some(result) = result_event(&row.output, now).filter(|_| row.kind == ExecutionType::Handler) {
            live.push(result);
        }
        if let Some(terminal) = terminal_event(row, now) {
            live.push(terminal);
        }
        *live.settled.lock().unwrap_or_else(|e| e.into_inner()) = Some(row.clone());
        live.set_state(row.state);
        tracing::info!(execution = %row.id, state = row.state.as_str(), ms = row.duration_ms.unwrap_or(0), "execution ended");
    }

    /// Persists the row; a store failure is logged (the run goes on).
    pub(super) async fn save(&self, row: &ExecutionRow) {
        if let Err(e) = self.store.update_execution(row).await {
            tracing::error!(execution = %row.id, error = %e, "cannot record an execution");
        }
    }
}

/// How an execution ended, to be stored.
#[derive(Debug)]
pub(super) struct Outcome {
    state: ExecutionState,
    reason: Option<String>,
    message: Option<String>,
    exit_code: Option<i64>,
    error: Option<ExecutionError>,
    result: Option<serde_json::Value>,
}

impl Outcome {
    /// Makes it a cancel.
    pub(super) fn cancelled(&mut self) {
        self.state = ExecutionState::Cancelled;
    }

    /// `Failed`, nothing else said yet.
    fn failed() -> Self {
        Self {
            state: ExecutionState::Failed,
            reason: None,
            message: None,
            exit_code: None,
            error: None,
            result: None,
        }
    }
}

/// `Failed` with `entry`'s code as reason and error.
pub(super) fn outcome_of(entry: &'static ErrorCode, message: String) -> Outcome {
    Outcome {
        state: ExecutionState::Failed,
        reason: Some(entry.code.to_owned()),
        error: Some(ExecutionError {
            code: entry.code.to_owned(),
            name: None,
            value: None,
            traceback: Vec::new(),
            message: Some(message.clone()),
        }),
        message: Some(message),
        ..Outcome::failed()
    }
}

/// The outcome of an ending (a handler's successful end aside: `handler_outcome`).
pub(super) fn outcome(row: &ExecutionRow, ending: Ending) -> Outcome {
    match ending {
        Ending::Ended(None) => Outcome {
            state: ExecutionState::Succeeded,
            exit_code: (row.kind != ExecutionType::Code).then_some(0),
            ..Outcome::failed()
        },
        Ending::Ended(Some(e)) if row.kind == ExecutionType::Code => Outcome {
            state: ExecutionState::Failed,
            reason: Some(codes::EXECUTION_CODE_ERROR.code.to_owned()),
            message: Some(format!("{}: {}", e.ename, e.evalue)),
            error: Some(ExecutionError {
                code: codes::EXECUTION_CODE_ERROR.code.to_owned(),
                name: Some(e.ename),
                value: Some(e.evalue),
                traceback: e.traceback,
                message: None,
            }),
            ..Outcome::failed()
        },
        Ending::Ended(Some(e)) => {
            let code = exit_code(&e);
            let message = match code {
                127 => format!("command not found: {}", e.traceback.join("; ")),
                -1 => "killed by a signal".to_owned(),
                n => format!("exited with code {n}"),
            };
            let mut o = outcome_of(&codes::EXECUTION_COMMAND_FAILED, message);
            o.exit_code = Some(code);
            o
        }
        Ending::TimedOut => {
            let mut o = outcome_of(
                &codes::EXECUTION_TIMEOUT,
                format!("did not finish within its timeout of {} s", row.timeout),
            );
            o.state = ExecutionState::TimedOut;
            o
        }
        Ending::Cancelled => {
            let mut o = outcome_of(&codes::EXECUTION_CANCELLED, "cancelled".into());
            o.state = ExecutionState::Cancelled;
            o
        }
        Ending::Lost(message) => {
            let mut o = outcome_of(&codes::EXECUTION_EXECUTOR_LOST, message);
            o.state = ExecutionState::Lost;
            o
        }
        Ending::Failed(message) => outcome_of(&codes::EXECUTION_EXECUTOR_ERROR, message),
    }
}

/// A command's exit code from its `error` event (`-1`: a signal).
fn exit_code(e: &ErrorDetail) -> i64 {
    e.evalue.trim().parse().unwrap_or(-1)
}

/// Appends one output event's text (a line, or a chunk) to `out`, up to [`MAX_OUTPUT`] bytes.
pub(super) fn append(out: &mut String, truncated: &mut bool, text: &str) {
    if *truncated {
        return;
    }
    let newline = if text.ends_with('\n') { "" } else { "\n" };
    let size = text.len() + newline.len();
    if out.len() + size <= MAX_OUTPUT {
        out.push_str(text);
        out.push_str(newline);
        return;
    }
    let mut room = MAX_OUTPUT.saturating_sub(out.len()).min(text.len());
    while !text.is_char_boundary(room) {
        room -= 1;
    }
    out.push_str(&text[..room]);
    *truncated = true;
}

/// The `result` event of a handler's return value, or of a code run's results.
pub(super) fn result_event(output: &ExecutionOutput, at: i64) -> Option<StreamEvent> {
    let value = output.result.clone()?;
    let mut results = serde_json::Map::new();
    results.insert("application/json".into(), value);
    Some(StreamEvent {
        results: Some(results),
        ..StreamEvent::new(EventType::Result, at)
    })
}

/// The terminal event of an ended execution: `execution_complete`, or `error` with the
/// catalog code as `ename`.
pub(super) fn terminal_event(row: &ExecutionRow, at: i64) -> Option<StreamEvent> {
    if !row.state.is_terminal() {
        return None;
    }
    if row.state == ExecutionState::Succeeded {
        return Some(StreamEvent::complete(row.duration_ms.unwrap_or(0), at));
    }
    let error = row.output.error.clone();
    let ename = row
        .reason
        .clone()
        .unwrap_or_else(|| row.state.as_str().to_owned());
    let evalue = error
        .as_ref()
        .and_then(|e| e.value.clone().or(e.message.clone()))
        .or(row.message.clone())
        .unwrap_or_default();
    let traceback = error.map(|e| e.traceback).unwrap_or_default();
    Some(StreamEvent::error(&ename, evalue, traceback, at))
}

impl Service {
    /// Start-up: re-attaches to the runs the previous process left `Running` (commands and
    /// handlers whose execd run is known, in a sandbox that still has a route), following
    /// each from the last event stored; settles the rest (`Queued`: `Cancelled`; a code run,
    /// or one not yet started in execd: `Lost`).
    pub async fn recover_executions(self: &Arc<Self>) -> Result<(), crate::orchestrator::error::Error> {
        for mut row in self.store.active_executions().await? {
            let record = match &row.sandbox_id {
                Some(id) => self.store.get(id).await?,
                None => None,
            };
            let sandbox = record.and_then(|record| {
                let target = record
                    .instance
                    .as_ref()
                    .and_then(|i| self.runtime.target(i, EXECD_PORT))?;
                Some(Sandbox { record, target })
            });
            let live = self.executions.register(&row.id, row.state);
            let reattach = row.state == ExecutionState::Running
                && row.execd_ref.is_some()
                && row.kind != ExecutionType::Code
                && isolated_session(&row).is_none();
            if let (Some(sandbox), false) = (&sandbox, reattach) {
                // An isolated run died with sandboxd's stream; its session goes too.
                self.end_isolated_session(&row, sandbox).await;
            }
            match sandbox.filter(|_| reattach) {
                Some(sandbox) => {
                    tracing::info!(execution = %row.id, after = row.last_event_id, "re-attaching to an execution");
                    let service = self.clone();
                    tokio::spawn(async move {
                        service.follow(&mut row, &live, &sandbox, None).await;
                        service.discard_one_shot(&row).await;
                        service.executions.finish(&row.id);
                    });
                }
                None => {
                    let o = if row.state == ExecutionState::Queued {
                        let mut o = outcome_of(
                            &codes::EXECUTION_CANCELLED,
                            "sandboxd restarted before execd acknowledged the run".into(),
                        );
                        o.cancelled();
                        o
                    } else {
                        outcome(
                            &row,
                            Ending::Lost("sandboxd restarted and cannot follow this run again".into()),
                        )
                    };
                    tracing::warn!(execution = %row.id, state = row.state.as_str(), "execution interrupted by a restart");
                    self.settle_execution(&mut row, &live, o).await;
                    self.discard_one_shot(&row).await;
                    self.executions.finish(&row.id);
                }
            }
        }
        Ok(())
    }
}

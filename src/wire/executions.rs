//! sandboxd's executions (`/v1/sandboxes/{id}/executions`, `/v1/executions`): a handler
//! called with an event, code, or a command, run in a sandbox through its execd, with a status
//! and a result that outlive the request (and the sandbox). Batches of them, too.
//!
//! Requests reject unknown fields, so a typo such as `timout` is a 400 naming it. Absent
//! optional fields are omitted from answers, never `null`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::lifecycle::Pagination;

/// Seconds an execution may run when the request sets none.
pub const DEFAULT_TIMEOUT: u64 = 30;
/// The longest `timeout`, seconds.
pub const MAX_TIMEOUT: u64 = 3600;
/// The longest `?wait=`, seconds.
pub const MAX_WAIT: u64 = 300;
/// The most jobs in one batch.
pub const MAX_BATCH_JOBS: usize = 100;
/// The most jobs of a batch that run at once.
pub const MAX_CONCURRENCY: u32 = 8;

/// What an execution runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum ExecutionType {
    /// `handler(event)` (or `handler(event, context)`) in `code`, its JSON return value the
    /// result.
    Handler,
    /// `code` in a code context (stateful between runs of that context).
    Code,
    /// A shell `command`, or an `argv` without a shell.
    Command,
}

impl ExecutionType {
    /// The wire (and stored) name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionType::Handler => "handler",
            ExecutionType::Code => "code",
            ExecutionType::Command => "command",
        }
    }

    /// The type named `text`.
    pub fn parse(text: &str) -> Option<Self> {
        [
            ExecutionType::Handler,
            ExecutionType::Code,
            ExecutionType::Command,
        ]
        .into_iter()
        .find(|t| t.as_str().eq_ignore_ascii_case(text))
    }
}

/// Where an execution is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum ExecutionState {
    /// One-shot: a sandbox is being made for it.
    Acquiring,
    /// Accepted, not started (a batch job waiting for its turn).
    Queued,
    /// Running in the sandbox.
    Running,
    /// Finished: exit code 0, or the handler returned.
    Succeeded,
    /// Finished otherwise; `error` says how.
    Failed,
    /// Interrupted at its timeout.
    TimedOut,
    /// Cancelled by a delete, or by `stopOnError` of its batch.
    Cancelled,
    /// Its executor went away (execd and the runtime both said so for `lostAfterSeconds`).
    Lost,
}

impl ExecutionState {
    /// The wire (and stored) name.
    pub fn as_str(self) -> &'static str {
        match self {
            ExecutionState::Acquiring => "Acquiring",
            ExecutionState::Queued => "Queued",
            ExecutionState::Running => "Running",
            ExecutionState::Succeeded => "Succeeded",
            ExecutionState::Failed => "Failed",
            ExecutionState::TimedOut => "TimedOut",
            ExecutionState::Cancelled => "Cancelled",
            ExecutionState::Lost => "Lost",
        }
    }

    /// The state named `text` (case-insensitive).
    pub fn parse(text: &str) -> Option<Self> {
        [
            ExecutionState::Acquiring,
            ExecutionState::Queued,
            ExecutionState::Running,
            ExecutionState::Succeeded,
            ExecutionState::Failed,
            ExecutionState::TimedOut,
            ExecutionState::Cancelled,
            ExecutionState::Lost,
        ]
        .into_iter()
        .find(|s| s.as_str().eq_ignore_ascii_case(text))
    }

    /// Whether nothing will change it any more.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            ExecutionState::Acquiring | ExecutionState::Queued | ExecutionState::Running
        )
    }
}

/// `POST /v1/sandboxes/{id}/executions` body (and one job of a batch, with its `id`).
/// Exactly one of `code`, `command` and `argv`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecutionRequest {
    /// `handler`, `code` or `command`; inferred when absent: `command`/`argv` → command,
    /// `handler` or `event` present → handler, else code.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<ExecutionType>,
    /// `python` (default) or `javascript` (needs `node` in the image), for code and handlers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// The code (≤ 1 MiB): a module defining the handler, or code for a context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// The handler's name (default `handler`); `[A-Za-z_][A-Za-z0-9_]*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handler: Option<String>,
    /// The handler's event: any JSON (`null` included, which makes the request a handler's),
    /// ≤ 1 MiB.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Object)]
    pub event: Option<serde_json::Value>,
    /// Shell text (`bash -c`, else `sh -c`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Program and arguments, without a shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Code only: an existing execd code context to run in (stateful).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_id: Option<String>,
    /// Seconds (1–3600, default 30); at the deadline the run is interrupted and, after a 2 s
    /// grace, `TimedOut`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 3600)]
    pub timeout: Option<u64>,
    /// Extra environment (commands and handlers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envs: Option<BTreeMap<String, String>>,
    /// Working directory (commands and handlers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Commands and handlers: run inside a fresh execd isolated session (the sandbox needs
    /// `extensions["bootstrap.execd.isolation"]="enable"`, else 409
    /// `EXECUTION::ISOLATION_UNAVAILABLE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolated: Option<bool>,
    /// One-shot (`POST /v1/executions` only): the template to make the sandbox from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_id: Option<String>,
    /// One-shot: the template's version (default: its current one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_version: Option<u32>,
    /// One-shot (`POST /v1/executions` only): the pool to acquire the sandbox from (its name,
    /// or `{"name": …}`); released after the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub pool_ref: Option<serde_json::Value>,
}

/// A field that is present, even as `null` (absent stays `None` through `default`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(d).map(Some)
}

/// `status` of an execution.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionStatus {
    /// Where it is.
    pub state: ExecutionState,
    /// Why (`EXECUTION::TIMEOUT`, `EXECUTION::EXECUTOR_LOST`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When `state` last changed (RFC 3339).
    pub last_transition_at: String,
}

/// How an execution failed: `code` from the catalog, and for a handler's exception its
/// `name`, `value` and `traceback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionError {
    /// `EXECUTION::HANDLER_ERROR`, `EXECUTION::TIMEOUT`, `EXECUTION::NON_ZERO_EXIT`, …
    pub code: String,
    /// The exception's type (`KeyError`), or the error's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The exception's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The traceback, in lines as the runtime formats them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traceback: Vec<String>,
    /// What happened, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What an execution produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionOutput {
    /// A handler's JSON return value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub result: Option<serde_json::Value>,
    /// Code: the last expression's `text/plain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Code: rich results (MIME bundles, `display_data` included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub outputs: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Standard output, at most 1 MiB (the first).
    #[serde(default)]
    pub stdout: String,
    /// Standard error, at most 1 MiB.
    #[serde(default)]
    pub stderr: String,
    /// Whether stdout was cut at 1 MiB.
    #[serde(default)]
    pub stdout_truncated: bool,
    /// Whether stderr was cut at 1 MiB.
    #[serde(default)]
    pub stderr_truncated: bool,
    /// How it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ExecutionError>,
}

/// An execution: `GET /v1/executions/{id}`. Answers that wait for the end (`?wait=`) carry
/// its output too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Execution {
    /// `exec-<uuid>`.
    pub id: String,
    /// The sandbox it runs in (one-shot: once made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox_id: Option<String>,
    /// Its batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    /// Its job id in the batch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// What it runs.
    #[serde(rename = "type")]
    pub kind: ExecutionType,
    /// Code and handlers: the language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Where it is.
    pub status: ExecutionStatus,
    /// The process's exit code, once it exited (`-1`: killed by a signal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Milliseconds from start to end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Seconds it may run.
    pub timeout: u64,
    /// RFC 3339.
    pub created_at: String,
    /// When it started running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// The output, on answers that waited for the end.
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub output: Option<ExecutionOutput>,
}

/// `GET /v1/executions/{id}/result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionResult {
    /// The execution.
    pub id: String,
    /// Its final status.
    pub status: ExecutionStatus,
    /// Exit code, when the process exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Milliseconds from start to end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// What it produced.
    #[serde(flatten)]
    pub output: ExecutionOutput,
}

/// `GET /v1/executions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListExecutionsResponse {
    /// One page, newest first (a batch's members in job order).
    pub items: Vec<Execution>,
    /// Where the page sits.
    pub pagination: Pagination,
}

/// `POST /v1/sandboxes/{id}/executions/batch` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchRequest {
    /// 1–100 jobs: each an ExecutionRequest plus a unique `id` (≤ 128 characters).
    #[schema(value_type = Vec<BatchJob>)]
    pub jobs: Vec<serde_json::Map<String, serde_json::Value>>,
    /// Command and handler jobs run at once (1–8, default 1); code jobs always run one after
    /// the other, in one fresh context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 8)]
    pub concurrency: Option<u32>,
    /// After a job fails, the jobs not yet started end `Cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_on_error: Option<bool>,
}

/// One job of a batch (for the schema; the body is read job by job so that an error names
/// the job).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchJob {
    /// Unique in the batch, ≤ 128 characters.
    pub id: String,
    /// The execution (every field of ExecutionRequest but the one-shot ones).
    #[serde(flatten)]
    pub request: ExecutionRequest,
}

/// One job's outcome in a batch summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchJobResult {
    /// The job's id.
    pub job_id: String,
    /// Its execution.
    pub execution_id: String,
    /// Whether it `Succeeded`.
    pub success: bool,
    /// Where it is.
    pub status: ExecutionStatus,
    /// Exit code, when the process exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    /// Milliseconds from start to end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// When it started (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// What it produced (once finished).
    #[serde(flatten)]
    pub output: ExecutionOutput,
}

/// A batch: `POST …/executions/batch`, `GET /v1/executions/batches/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchSummary {
    /// `batch-<uuid>`.
    pub batch_id: String,
    /// The sandbox.
    pub sandbox_id: String,
    /// Jobs in all.
    pub total: u32,
    /// Jobs that succeeded.
    pub succeeded: u32,
    /// Jobs that ended otherwise.
    pub failed: u32,
    /// Jobs not finished.
    pub pending: u32,
    /// One per job, in input order.
    pub results: Vec<BatchJobResult>,
}

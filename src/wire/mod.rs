//! API types shared by the agent, the orchestrator and the tests: requests, responses, stream
//! events and the error body. This is the only module that derives serde for the wire; field
//! names follow the OpenSandbox contract exactly (snake_case on the execd plane).
//!
//! Pure data, no I/O, no async.

pub mod code;
#[cfg(feature = "orchestrator")]
pub mod executions;
// sandboxd's error catalog: the agent never links it.
#[cfg(feature = "orchestrator")]
pub mod errors;
#[cfg(feature = "orchestrator")]
pub mod events;
pub mod files;
pub mod identity;
pub mod isolated;
pub mod lifecycle;
pub mod openapi;
pub mod time;
pub mod usage;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[cfg(feature = "orchestrator")]
pub mod pools;
#[cfg(feature = "orchestrator")]
pub mod prepull;
pub mod pty;
#[cfg(feature = "orchestrator")]
pub mod snapshots;
#[cfg(feature = "orchestrator")]
pub mod templates;

/// Error codes of the execd plane. Serialized in the contract's SCREAMING_SNAKE_CASE so that
/// clients written against upstream keep matching them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The body is not valid JSON or fails validation.
    InvalidRequestBody,
    /// A required query parameter is missing.
    MissingQuery,
    /// The operation failed while running.
    RuntimeError,
    /// No file at the given path.
    FileNotFound,
    /// An upload's `file` part is missing or unusable.
    InvalidFile,
    /// An upload's content could not be read or written.
    InvalidFileContent,
    /// An upload's `metadata` part is missing or not valid metadata JSON.
    InvalidFileMetadata,
    /// The filesystem has no room (or quota) left for the write (HTTP 507).
    InsufficientStorage,
    /// The kernel refused the operation for this identity (EACCES/EPERM; HTTP 403).
    PermissionDenied,
    /// No session or code context with that id.
    ContextNotFound,
    /// No command with that id (routes beyond the contract).
    CommandNotFound,
    /// The request conflicts with the current state of the resource.
    Conflict,
    /// The feature is not available here.
    NotSupported,
    /// Another client holds the terminal session (PTY WebSocket).
    AlreadyConnected,
    /// The proxy could not reach the target port, or it broke off.
    BadGateway,
    /// The access token is missing or wrong.
    Unauthorized,
    /// No isolated session with that id.
    SessionNotFound,
    /// Isolation is not available on this host (or not allowed degraded).
    ServiceUnavailable,
    /// A file operation named a directory (download, upload, replace, archive entry; HTTP 400).
    IsADirectory,
    /// The request body is larger than the route accepts (HTTP 413).
    PayloadTooLarge,
    /// The client stopped sending the request body (HTTP 408).
    RequestTimeout,
    /// The cap on bash sessions or code contexts is reached (HTTP 429): delete some, or wait
    /// for idle ones to be reaped.
    TooManySessions,
    /// execd is running the sandbox's pre-start hook (`/ping` answers 503 until it is done).
    Starting,
    /// Anything else.
    Unknown,
}

/// The body of every error response: `{code, message}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation, lowercase, no trailing period.
    pub message: String,
}

/// The 401 body. Upstream answers `{"error": "..."}`; we add `code` and `message` so that it is a
/// superset of both shapes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UnauthorizedBody {
    /// Always `UNAUTHORIZED`.
    pub code: ErrorCode,
    /// Same text as `error`.
    pub message: String,
    /// Upstream's field.
    pub error: String,
}

/// `POST /command`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RunCommandRequest {
    /// Shell text, run by `bash -c` (or `sh -c` when the image has no bash). Exactly one of
    /// `command` and `argv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Program and arguments, run without a shell. Exactly one of `command` and `argv`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argv: Option<Vec<String>>,
    /// Working directory; `~`, `$VAR` and `${VAR}` are expanded. Must exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Extra environment, taking precedence over `EXECD_ENVS` and execd's own environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envs: Option<BTreeMap<String, String>>,
    /// Milliseconds before the process group is killed; absent or 0 means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
    /// Return right after `init`; output goes to the log readable through `/command/{id}/logs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background: Option<bool>,
    /// Run as this uid (execd must be root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Run with this gid; requires `uid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Keep stdin open as a pipe fed by `POST /command/{id}/stdin` (beyond the contract).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<bool>,
}

/// CPU time and peak memory of a finished command (beyond the contract).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    /// User CPU time in milliseconds, the command and the descendants it waited for.
    pub cpu_user_ms: u64,
    /// System CPU time in milliseconds.
    pub cpu_system_ms: u64,
    /// Peak resident set size in KiB of the largest process.
    pub max_rss_kib: u64,
}

/// `GET /command/status/{id}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CommandStatusResponse {
    /// The command id.
    pub id: String,
    /// The command text (`argv` joined by spaces for argv commands).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub content: String,
    /// Whether the command is still running.
    pub running: bool,
    /// Exit code once finished; -1 when killed by a signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// `exit status N` or `signal: killed` once finished with a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339 start time.
    pub started_at: String,
    /// RFC 3339 end time, once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Resource usage, once finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

/// `POST /session`; the body may be empty.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct CreateSessionRequest {
    /// Initial working directory of the shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
}

/// Answer of `POST /session`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CreateSessionResponse {
    /// UUID of the new session.
    pub session_id: String,
}

/// `POST /session/{id}/run`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RunInSessionRequest {
    /// Shell text run in the session's shell.
    pub command: String,
    /// Directory to change to before this run (the change persists, as `cd` would).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Milliseconds before the run is killed; absent or 0 means no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<i64>,
}

/// Kind of a stream event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// First event; `text` is the execution (or session) id.
    Init,
    /// Kernel status (code contexts only).
    Status,
    /// The execution failed; `error` says how. Terminal for commands.
    Error,
    /// A line (commands) or chunk (kernels) of standard output.
    Stdout,
    /// A line or chunk of standard error.
    Stderr,
    /// A rich result (code contexts).
    Result,
    /// The execution finished successfully. Terminal.
    ExecutionComplete,
    /// Execution counter of a kernel.
    ExecutionCount,
    /// Liveness (upstream sends these; we use SSE comments instead).
    Ping,
}

/// `error` of an error event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Error name, e.g. `CommandExecError`.
    pub ename: String,
    /// Error value; for commands the exit code as a string (`-1` for a signal).
    pub evalue: String,
    /// Explanation lines.
    pub traceback: Vec<String>,
}

/// One event of an execution stream, sent as the `data:` of a standard SSE event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StreamEvent {
    /// Event kind.
    #[serde(rename = "type")]
    pub kind: EventType,
    /// Text payload (id for `init`, output for `stdout`/`stderr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Kernel execution counter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_count: Option<i64>,
    /// Milliseconds the execution took (on `execution_complete`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_time: Option<u64>,
    /// Unix milliseconds; always present.
    pub timestamp: i64,
    /// MIME bundle of a result; `text/plain` is renamed `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Object)]
    pub results: Option<serde_json::Map<String, serde_json::Value>>,
    /// Failure details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

impl StreamEvent {
    /// An event with only a kind and a timestamp.
    pub fn new(kind: EventType, timestamp: i64) -> Self {
        Self {
            kind,
            text: None,
            execution_count: None,
            execution_time: None,
            timestamp,
            results: None,
            error: None,
        }
    }

    /// `init` carrying the execution id.
    pub fn init(id: &str, timestamp: i64) -> Self {
        Self {
            text: Some(id.to_owned()),
            ..Self::new(EventType::Init, timestamp)
        }
    }

    /// `execution_complete`; `execution_time` is omitted when zero, as upstream does.
    pub fn complete(execution_ms: u64, timestamp: i64) -> Self {
        Self {
            execution_time: (execution_ms > 0).then_some(execution_ms),
            ..Self::new(EventType::ExecutionComplete, timestamp)
        }
    }

    /// `error` with the given details.
    pub fn error(ename: &str, evalue: String, traceback: Vec<String>, timestamp: i64) -> Self {
        Self {
            error: Some(ErrorDetail {
                ename: ename.to_owned(),
                evalue,
                traceback,
            }),
            ..Self::new(EventType::Error, timestamp)
        }
    }

    /// Whether this event ends an execution stream.
    pub fn is_terminal(&self) -> bool {
        matches!(self.kind, EventType::ExecutionComplete | EventType::Error)
    }
}

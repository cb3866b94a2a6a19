//! The HTTP error type of the agent: every failure becomes `{code, message}` with the
//! contract's status code. Domain errors convert through `From`, so handlers use `?`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::agent::command::{CommandError, StdinError};
use crate::agent::files::FilesError;
use crate::agent::isolated::IsolatedError;
use crate::agent::kernel::ContextError;
use crate::agent::proxy::ProxyError;
use crate::agent::pty::PtyError;
use crate::agent::session::SessionError;
use crate::agent::watch::WatchError;
use crate::wire::{ErrorBody, ErrorCode};

/// An error answered to the client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
}

impl ApiError {
    /// An error with an explicit status and code.
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 `INVALID_REQUEST_BODY`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, ErrorCode::InvalidRequestBody, message)
    }

    /// 400 `MISSING_QUERY`.
    pub fn missing_query(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::MissingQuery,
            format!("missing query parameter {name}"),
        )
    }

    /// The same error with `context: ` in front of its message (e.g. which upload part failed).
    pub fn context(mut self, context: impl std::fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// The same error under another code, keeping the status.
    pub fn with_code(mut self, code: ErrorCode) -> Self {
        self.code = code;
        self
    }

    /// 429 `TOO_MANY_SESSIONS`: a cap on sessions or contexts is reached.
    pub fn too_many_sessions(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManySessions, message)
    }

    /// 500 `RUNTIME_ERROR`. The message is for the client; details belong in the log.
    pub fn runtime(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::RuntimeError,
            message,
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, code = ?self.code, message = %self.message, "request failed");
        }
        let body = ErrorBody {
            code: self.code,
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::CommandOrArgv
            | CommandError::Argv(_)
            | CommandError::GidWithoutUid
            | CommandError::Timeout
            | CommandError::Cwd { .. }
            | CommandError::Envs(_) => Self::bad_request(e.to_string()),
        }
    }
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        match e {
            // The contract answers an unknown session on run with a 500 (sic).
            SessionError::NotFound(_) => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::RuntimeError,
                e.to_string(),
            ),
            SessionError::Cwd { .. } | SessionError::Timeout | SessionError::EmptyCommand => {
                Self::bad_request(e.to_string())
            }
            SessionError::Full(_) => Self::too_many_sessions(e.to_string()),
        }
    }
}

impl From<StdinError> for ApiError {
    fn from(e: StdinError) -> Self {
        match e {
            StdinError::NotOpen | StdinError::Write(_) => {
                Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, e.to_string())
            }
        }
    }
}

impl From<ContextError> for ApiError {
    fn from(e: ContextError) -> Self {
        match e {
            ContextError::UnknownLanguage { .. } | ContextError::Cwd { .. } | ContextError::EmptyCode => {
                Self::bad_request(e.to_string())
            }
            // The contract answers an unknown context on POST /code with a 500 before any event.
            ContextError::NotFound(_) | ContextError::Start { .. } => Self::runtime(e.to_string()),
            ContextError::Full(_) => Self::too_many_sessions(e.to_string()),
            ContextError::Command(c) => c.into(),
            ContextError::Session(s) => s.into(),
        }
    }
}

impl From<PtyError> for ApiError {
    fn from(e: PtyError) -> Self {
        match e {
            PtyError::NotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, ErrorCode::ContextNotFound, e.to_string())
            }
            PtyError::AlreadyConnected(_) => {
                Self::new(StatusCode::CONFLICT, ErrorCode::AlreadyConnected, e.to_string())
            }
            PtyError::Cwd { .. }
            | PtyError::CreateCwd { .. }
            | PtyError::Size
            | PtyError::NotATerminal
            | PtyError::UnknownSignal(_) => Self::bad_request(e.to_string()),
            PtyError::NotRunning | PtyError::ReadOnly | PtyError::StdinWrite(_) => {
                Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, e.to_string())
            }
            PtyError::Start(_) | PtyError::Resize(_) => Self::runtime(e.to_string()),
        }
    }
}

impl From<ProxyError> for ApiError {
    fn from(e: ProxyError) -> Self {
        match e {
            // A loop is the request's own doing (its path names execd twice), and the same
            // request always fails the same way: a 400, not a 5xx that clients might retry.
            ProxyError::MissingPort
            | ProxyError::InvalidPort(_)
            | ProxyError::Uri(_)
            | ProxyError::Loop { .. } => Self::bad_request(e.to_string()),
            ProxyError::Connect { port, .. } | ProxyError::Upstream { port, .. } => {
                // The details are for the log; the client learns whether anything accepted
                // the connection (sandboxd's tcpSocket readiness probe goes by that).
                tracing::debug!(error = %e, "proxy target failed");
                let message = match e {
                    ProxyError::Connect { .. } => format!("cannot connect to port {port}"),
                    _ => format!("port {port} did not answer"),
                };
                Self::new(StatusCode::BAD_GATEWAY, ErrorCode::BadGateway, message)
            }
        }
    }
}

impl From<FilesError> for ApiError {
    fn from(e: FilesError) -> Self {
        let message = e.to_string();
        match &e {
            FilesError::EmptyPath
            | FilesError::NulInPath
            | FilesError::Expand { .. }
            | FilesError::NotDirectory(_)
            | FilesError::SymlinkRoot(_)
            | FilesError::BadMode(_)
            | FilesError::UnknownUser(_)
            | FilesError::UnknownGroup(_)
            | FilesError::Pattern { .. }
            | FilesError::EmptyOld(_)
            | FilesError::RemoveRoot
            | FilesError::EntryEscapes(_)
            | FilesError::EntryThroughSymlink { .. }
            | FilesError::Archive(_)
            | FilesError::Body(_) => Self::bad_request(message),
            FilesError::NotFound(_) => Self::new(StatusCode::NOT_FOUND, ErrorCode::FileNotFound, message),
            FilesError::IsDirectory(_) => {
                Self::new(StatusCode::BAD_REQUEST, ErrorCode::IsADirectory, message)
            }
            // The contract answers these two with a 500.
            FilesError::RemoveDirectory(_) | FilesError::Exists(_) => Self::runtime(message),
            FilesError::Identity { .. } => {
                Self::new(StatusCode::FORBIDDEN, ErrorCode::PermissionDenied, message)
            }
            FilesError::Worker => Self::runtime(message),
            FilesError::Io { source, .. } => {
                let (status, code) = io_status(source);
                Self::new(status, code, message)
            }
        }
    }
}

/// Status and code for a kernel error: ENOENT 404, EACCES/EPERM/EROFS 403, ENOSPC/EDQUOT 507,
/// bad names 400, anything else 500.
pub fn io_status(e: &std::io::Error) -> (StatusCode, ErrorCode) {
    match e.raw_os_error() {
        Some(libc::ENOENT) => (StatusCode::NOT_FOUND, ErrorCode::FileNotFound),
        Some(libc::EACCES | libc::EPERM | libc::EROFS) => {
            (StatusCode::FORBIDDEN, ErrorCode::PermissionDenied)
        }
        Some(libc::ENOSPC | libc::EDQUOT) => {
            (StatusCode::INSUFFICIENT_STORAGE, ErrorCode::InsufficientStorage)
        }
        Some(
            libc::ENOTDIR
            | libc::EISDIR
            | libc::ENAMETOOLONG
            | libc::EINVAL
            | libc::ELOOP
            | libc::EEXIST
            | libc::ENOTEMPTY,
        ) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidRequestBody),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::RuntimeError),
    }
}

impl From<WatchError> for ApiError {
    fn from(e: WatchError) -> Self {
        match e {
            WatchError::NotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, ErrorCode::FileNotFound, e.to_string())
            }
            WatchError::Notify { .. } => Self::runtime(e.to_string()),
        }
    }
}

impl From<IsolatedError> for ApiError {
    fn from(e: IsolatedError) -> Self {
        let message = e.to_string();
        match e {
            IsolatedError::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ServiceUnavailable,
                message,
            ),
            IsolatedError::NotSupported(_) => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NotSupported, message)
            }
            IsolatedError::Invalid(_) => Self::bad_request(message),
            IsolatedError::NotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, ErrorCode::SessionNotFound, message)
            }
            IsolatedError::RunNotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, ErrorCode::CommandNotFound, message)
            }
            IsolatedError::NothingPersisted => {
                Self::new(StatusCode::NOT_FOUND, ErrorCode::FileNotFound, message)
            }
            IsolatedError::NotActive(_) => Self::new(StatusCode::CONFLICT, ErrorCode::Conflict, message),
            IsolatedError::ReadOnly(_) => {
                Self::new(StatusCode::FORBIDDEN, ErrorCode::PermissionDenied, message)
            }
            IsolatedError::Jail(_) => Self::runtime(message),
            IsolatedError::Files(f) => f.into(),
        }
    }
}

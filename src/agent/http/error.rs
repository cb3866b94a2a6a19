//! The HTTP error type of the agent: every failure becomes `{code, message}` with the
//! contract's status code. Domain errors convert through `From`, so handlers use `?`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::agent::command::{CommandError, StdinError};
use crate::agent::kernel::ContextError;
use crate::agent::proxy::ProxyError;
use crate::agent::pty::PtyError;
use crate::agent::session::SessionError;
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
            ProxyError::MissingPort | ProxyError::InvalidPort(_) | ProxyError::Uri(_) => {
                Self::bad_request(e.to_string())
            }
            ProxyError::Connect { .. } | ProxyError::Upstream { .. } => {
                // The details are for the log; the client learns the port did not answer.
                tracing::debug!(error = %e, "proxy target failed");
                Self::new(StatusCode::BAD_GATEWAY, ErrorCode::BadGateway, "bad gateway")
            }
        }
    }
}

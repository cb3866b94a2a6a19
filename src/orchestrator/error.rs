//! Lifecycle errors: an HTTP status plus the contract's `{code, message}` body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::docker::DockerError;
use crate::wire::lifecycle::LifecycleError;

/// A failed lifecycle request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// HTTP status.
    pub status: StatusCode,
    /// Upstream-style code, e.g. `SANDBOX::NOT_FOUND`.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

impl Error {
    /// Any status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400: the request is malformed or asks for something invalid.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "SANDBOX::INVALID_PARAMETER", message)
    }

    /// 400: valid, but not something the Docker runtime does.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "SANDBOX::API_NOT_SUPPORTED", message)
    }

    /// 404 for a sandbox id.
    pub fn not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "SANDBOX::NOT_FOUND",
            format!("sandbox {id} not found"),
        )
    }

    /// 409: the sandbox's state forbids the operation.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "SANDBOX::INVALID_STATE", message)
    }

    /// 409 (upstream's code): pause, or the server proxy, on a sandbox that is not running.
    /// `state` is the contract's state name, e.g. `Paused`.
    pub fn not_running(id: &str, state: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "DOCKER::SANDBOX_NOT_RUNNING",
            format!("sandbox {id} is {state}"),
        )
    }

    /// 409 (upstream's code): resume on a sandbox that is not paused.
    pub fn not_paused(id: &str, state: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "DOCKER::SANDBOX_NOT_PAUSED",
            format!("sandbox {id} is {state}, not Paused"),
        )
    }

    /// 501: a route of the 1.1.1 server that the Docker runtime does not offer.
    pub fn not_implemented(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, code, message)
    }

    /// 500: sandboxd or the engine failed.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "SANDBOX::RUNTIME_ERROR",
            message,
        )
    }
}

impl From<DockerError> for Error {
    fn from(e: DockerError) -> Self {
        match e {
            DockerError::Rejected(m) => Self::invalid(format!("docker rejected the request: {m}")),
            DockerError::Conflict(m) => Self::conflict(m),
            DockerError::NotFound(m) => Self::new(StatusCode::NOT_FOUND, "SANDBOX::NOT_FOUND", m),
            DockerError::Engine(m) | DockerError::Transient(m) => Self::internal(m),
        }
    }
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Self {
        Self::internal(format!("{e:#}"))
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(code = self.code, message = %self.message, "request failed");
        }
        let body = LifecycleError {
            code: self.code.to_owned(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

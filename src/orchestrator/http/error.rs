//! The domain error at the edge: each variant has exactly one status and catalogued code
//! (no catch-all arm, so a new variant cannot go unmapped). A 5xx body says what failed in
//! general terms; the real error (SQLite's or the engine's words) is logged in the request's
//! span, which carries its `X-Request-ID`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::orchestrator::error::{AuthFailure, Conflict, Denial, Error, Feature};
use crate::orchestrator::runtime::RuntimeError;
use crate::wire::lifecycle::LifecycleError;

/// What a client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Catalogued code, e.g. `SANDBOX::NOT_FOUND`.
    pub code: &'static str,
    /// For people; never internal error text on a 5xx.
    pub message: String,
}

/// The line every 5xx that hides its cause ends with.
const SEE_LOG: &str = "sandboxd's log has the details under this response's X-Request-ID";

impl From<&Error> for ApiError {
    fn from(e: &Error) -> Self {
        let told = |status, code, message: String| ApiError {
            status,
            code,
            message,
        };
        let said = |status, code| told(status, code, e.to_string());
        match e {
            Error::NotFound { .. } => said(StatusCode::NOT_FOUND, "SANDBOX::NOT_FOUND"),
            Error::Invalid(_) => said(StatusCode::BAD_REQUEST, "SANDBOX::INVALID_PARAMETER"),
            Error::InvalidMetadataFilter(_) => said(StatusCode::BAD_REQUEST, "INVALID_METADATA_FORMAT"),
            Error::UnsupportedField(_) => said(StatusCode::BAD_REQUEST, "SANDBOX::API_NOT_SUPPORTED"),
            Error::Unsupported(feature) => said(
                StatusCode::NOT_IMPLEMENTED,
                match feature {
                    Feature::Templates => "FSB::API_NOT_SUPPORTED",
                    Feature::Snapshots | Feature::NetworkPolicy | Feature::Pools => {
                        "SANDBOX::API_NOT_SUPPORTED"
                    }
                },
            ),
            Error::HostPathNotAllowed(_) => said(StatusCode::FORBIDDEN, "SANDBOX::HOST_PATH_NOT_ALLOWED"),
            Error::TooLarge { .. } => said(StatusCode::PAYLOAD_TOO_LARGE, "SANDBOX::PAYLOAD_TOO_LARGE"),
            Error::Conflict(conflict) => said(
                StatusCode::CONFLICT,
                match conflict {
                    Conflict::NotRunning { .. } => "DOCKER::SANDBOX_NOT_RUNNING",
                    Conflict::NotPaused { .. } => "DOCKER::SANDBOX_NOT_PAUSED",
                    Conflict::DeletedWhileStarting(_)
                    | Conflict::NoExpiry(_)
                    | Conflict::NoRoute(_)
                    | Conflict::Runtime(_) => "SANDBOX::INVALID_STATE",
                },
            ),
            Error::Unauthenticated(failure) => said(
                StatusCode::UNAUTHORIZED,
                match failure {
                    AuthFailure::Missing => "MISSING_API_KEY",
                    AuthFailure::Invalid => "INVALID_API_KEY",
                },
            ),
            Error::Forbidden(denial) => said(
                StatusCode::FORBIDDEN,
                match denial {
                    Denial::Role { .. } => "AUTH::FORBIDDEN",
                },
            ),
            // The sandbox's own exit and output: the user's program, not sandboxd's internals.
            Error::StartFailed(_) => said(StatusCode::INTERNAL_SERVER_ERROR, "SANDBOX::RUNTIME_ERROR"),
            Error::FreezerGaveUp { .. } => said(StatusCode::INTERNAL_SERVER_ERROR, "SANDBOX::INTERNAL_ERROR"),
            Error::Unreachable { id, port, .. } => told(
                StatusCode::BAD_GATEWAY,
                "SANDBOX::PROXY_ERROR",
                format!("cannot reach port {port} of sandbox {id}"),
            ),
            Error::RateLimited { .. } => said(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMIT::EXCEEDED"),
            Error::NoRoute => said(StatusCode::NOT_FOUND, "GENERAL::NOT_FOUND"),
            Error::Runtime(r) => match r {
                RuntimeError::NotFound(_) => said(StatusCode::NOT_FOUND, "SANDBOX::NOT_FOUND"),
                RuntimeError::ImageNotFound(_) => said(StatusCode::BAD_REQUEST, "SANDBOX::IMAGE_NOT_FOUND"),
                RuntimeError::Rejected(_) => said(StatusCode::BAD_REQUEST, "SANDBOX::INVALID_PARAMETER"),
                RuntimeError::Conflict(_) => said(StatusCode::CONFLICT, "SANDBOX::INVALID_STATE"),
                RuntimeError::Transient(_) | RuntimeError::Engine { .. } => told(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "SANDBOX::RUNTIME_ERROR",
                    format!("the container runtime failed; {SEE_LOG}"),
                ),
                RuntimeError::Unavailable(_) => told(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "SANDBOX::RUNTIME_UNAVAILABLE",
                    format!("the container runtime cannot be reached; {SEE_LOG}"),
                ),
            },
            Error::Store(_) => told(
                StatusCode::INTERNAL_SERVER_ERROR,
                "SANDBOX::INTERNAL_ERROR",
                format!("sandboxd's state store failed; {SEE_LOG}"),
            ),
            Error::Internal(_) => told(
                StatusCode::INTERNAL_SERVER_ERROR,
                "SANDBOX::INTERNAL_ERROR",
                format!("sandboxd failed; {SEE_LOG}"),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = LifecycleError {
            code: self.code.to_owned(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let api = ApiError::from(&self);
        if api.status.is_server_error() {
            tracing::error!(code = api.code, error = %self, "request failed");
        } else if !self.is_client_error() {
            tracing::warn!(code = api.code, error = %self, "request refused");
        }
        api.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::store::StoreError;

    #[test]
    fn server_errors_never_carry_sqlite_or_engine_text() {
        let sqlite = Error::Store(StoreError::Sqlite {
            op: "insert a sandbox",
            source: rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                Some("database or disk is full".into()),
            ),
        });
        let corrupt = Error::Store(StoreError::UnknownPhase {
            table: "sandboxes",
            id: "s1".into(),
            value: "hibernating".into(),
        });
        let engine = Error::Runtime(RuntimeError::Engine {
            op: "create the container",
            message: "500: Error response from daemon: devmapper: Thin Pool has 0 free data blocks".into(),
        });
        let down = Error::Runtime(RuntimeError::Unavailable(
            "connect /var/run/docker.sock: connection refused".into(),
        ));
        let flaky = Error::Runtime(RuntimeError::Transient("runc: unable to freeze".into()));
        let proxy = Error::Unreachable {
            id: "s1".into(),
            port: 8080,
            reason: "tcp connect error: Connection refused (os error 111)".into(),
        };
        for (e, secret) in [
            (sqlite, "disk is full"),
            (corrupt, "hibernating"),
            (engine, "Thin Pool"),
            (down, "docker.sock"),
            (flaky, "runc"),
            (proxy, "os error"),
        ] {
            let api = ApiError::from(&e);
            assert!(api.status.is_server_error(), "{e:?}");
            assert!(
                !api.message.contains(secret),
                "{e:?} told the client: {}",
                api.message
            );
            assert!(!api.message.to_lowercase().contains("sqlite"), "{}", api.message);
        }
    }

    #[test]
    fn every_conflict_and_failure_has_its_code() {
        let code = |e: Error| ApiError::from(&e).code;
        let id = || "s".to_owned();
        assert_eq!(
            code(Error::Conflict(Conflict::NotRunning {
                id: id(),
                state: "Paused".into()
            })),
            "DOCKER::SANDBOX_NOT_RUNNING"
        );
        assert_eq!(
            code(Error::Conflict(Conflict::NotPaused {
                id: id(),
                state: "Running".into()
            })),
            "DOCKER::SANDBOX_NOT_PAUSED"
        );
        assert_eq!(
            code(Error::Conflict(Conflict::NoExpiry(id()))),
            "SANDBOX::INVALID_STATE"
        );
        assert_eq!(
            code(Error::Unsupported(Feature::Templates)),
            "FSB::API_NOT_SUPPORTED"
        );
        assert_eq!(
            code(Error::Unauthenticated(AuthFailure::Missing)),
            "MISSING_API_KEY"
        );
        assert_eq!(code(Error::TooLarge { limit: 1 }), "SANDBOX::PAYLOAD_TOO_LARGE");
        let image = ApiError::from(&Error::Runtime(RuntimeError::ImageNotFound(
            "image \"x\" is not present".into(),
        )));
        assert_eq!(
            (image.status, image.code),
            (StatusCode::BAD_REQUEST, "SANDBOX::IMAGE_NOT_FOUND")
        );
        assert!(
            image.message.contains("not present"),
            "a client's own error keeps its words"
        );
    }
}

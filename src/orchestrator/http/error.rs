//! The domain error at the edge: each variant has exactly one status and catalogued code
//! (no catch-all arm, so a new variant cannot go unmapped). Codes come from the catalog
//! (`wire::errors`) only, so an uncatalogued one cannot be sent. A 5xx body says what failed in
//! general terms; the real error (SQLite's or the engine's words) is logged in the request's
//! span, which carries its `X-Request-ID`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::orchestrator::error::{AuthFailure, Conflict, Denial, Error, Feature, Kind};
use crate::orchestrator::runtime::RuntimeError;
use crate::wire::errors::{self as codes, ErrorCode};
use crate::wire::lifecycle::LifecycleError;

/// What a client is told. Put in the response's extensions as well, so that `error_format`
/// can render the detailed body without parsing this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status, one of the entry's.
    pub status: StatusCode,
    /// The catalog entry, e.g. [`codes::SANDBOX_NOT_FOUND`].
    pub entry: &'static ErrorCode,
    /// For people; never internal error text on a 5xx.
    pub message: String,
}

impl ApiError {
    /// The entry with its own status.
    pub fn new(entry: &'static ErrorCode, message: String) -> Self {
        Self::with_status(entry, entry.status, message)
    }

    /// The entry with one of its other statuses.
    fn with_status(entry: &'static ErrorCode, status: u16, message: String) -> Self {
        debug_assert!(
            entry.has_status(status),
            "{} is not sent with {status}",
            entry.code
        );
        Self {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            entry,
            message,
        }
    }
}

/// The line every 5xx that hides its cause ends with.
const SEE_LOG: &str = "sandboxd's log has the details under this response's X-Request-ID";

impl From<&Error> for ApiError {
    fn from(e: &Error) -> Self {
        let told = ApiError::new;
        let said = |entry| told(entry, e.to_string());
        match e {
            Error::NotFound { kind, .. } => said(match kind {
                Kind::Sandbox => &codes::SANDBOX_NOT_FOUND,
                Kind::Token => &codes::AUTH_TOKEN_NOT_FOUND,
                Kind::Template => &codes::TEMPLATE_NOT_FOUND,
                Kind::TemplateVersion => &codes::TEMPLATE_VERSION_NOT_FOUND,
                Kind::Prepull => &codes::PREPULL_NOT_FOUND,
                Kind::Pool => &codes::POOL_NOT_FOUND,
                Kind::Container => &codes::CONTAINER_NOT_FOUND,
                Kind::Execution | Kind::Batch => &codes::EXECUTION_NOT_FOUND,
                Kind::Snapshot => &codes::SNAPSHOT_NOT_FOUND,
            }),
            Error::Invalid(_) => said(&codes::SANDBOX_INVALID_PARAMETER),
            Error::InvalidSpec(_) => said(&codes::TEMPLATE_INVALID_SPEC),
            Error::ImportInvalid(_) => said(&codes::TEMPLATE_IMPORT_INVALID),
            Error::InvalidImage(_) => said(&codes::PREPULL_INVALID_IMAGE),
            Error::UnsupportedLanguage(_) => said(&codes::EXECUTION_UNSUPPORTED_LANGUAGE),
            Error::InvalidMetadataFilter(_) => said(&codes::INVALID_METADATA_FORMAT),
            Error::ScopeUnsupported { .. } => said(&codes::DIAGNOSTICS_SCOPE_UNSUPPORTED),
            // Upstream's code for a field this runtime does not do, with upstream's 400.
            Error::UnsupportedField(_) => {
                ApiError::with_status(&codes::SANDBOX_API_NOT_SUPPORTED, 400, e.to_string())
            }
            Error::Unsupported(feature) => said(match feature {
                Feature::Snapshots
                | Feature::NetworkPolicy
                | Feature::FreezePause
                | Feature::RootfsWithoutWorkspace => &codes::SANDBOX_API_NOT_SUPPORTED,
            }),
            Error::HostPathNotAllowed(_) => said(&codes::SANDBOX_HOST_PATH_NOT_ALLOWED),
            Error::TooLarge { .. } => said(&codes::SANDBOX_PAYLOAD_TOO_LARGE),
            Error::BodyTimeout => said(&codes::SANDBOX_REQUEST_TIMEOUT),
            Error::Conflict(conflict) => said(match conflict {
                Conflict::NotRunning { .. } => &codes::DOCKER_SANDBOX_NOT_RUNNING,
                Conflict::NotPaused { .. } => &codes::DOCKER_SANDBOX_NOT_PAUSED,
                Conflict::DeletedWhileStarting(_)
                | Conflict::NotAwaitingStart { .. }
                | Conflict::NoExpiry(_)
                | Conflict::NoRoute(_)
                | Conflict::Runtime(_)
                | Conflict::SnapshotInProgress(_)
                | Conflict::NotRestorable(_) => &codes::SANDBOX_INVALID_STATE,
                Conflict::SnapshotInUse(_) => &codes::SNAPSHOT_IN_USE,
                Conflict::SnapshotNotReady(_) => &codes::SNAPSHOT_NOT_READY,
                Conflict::TemplateExists(_) => &codes::TEMPLATE_CONFLICT,
                Conflict::TemplateNotReady(_) => &codes::TEMPLATE_NOT_READY,
                Conflict::TemplateInUse(_) => &codes::TEMPLATE_IN_USE,
                Conflict::PoolExists(_) => &codes::POOL_ALREADY_EXISTS,
                Conflict::NotAllocated(_) => &codes::POOL_NOT_ALLOCATED,
                Conflict::ExecutionNotFinished { .. } => &codes::EXECUTION_NOT_FINISHED,
                Conflict::ExecutionFinished { .. } => &codes::EXECUTION_ALREADY_FINISHED,
                Conflict::IsolationUnavailable => &codes::EXECUTION_ISOLATION_UNAVAILABLE,
            }),
            Error::Unauthenticated(failure) => said(match failure {
                AuthFailure::Missing => &codes::MISSING_API_KEY,
                AuthFailure::InvalidApiKey => &codes::INVALID_API_KEY,
                AuthFailure::InvalidToken | AuthFailure::InvalidTicket => &codes::AUTH_INVALID_TOKEN,
                AuthFailure::TokenExpired => &codes::AUTH_TOKEN_EXPIRED,
                AuthFailure::TokenRevoked => &codes::AUTH_TOKEN_REVOKED,
            }),
            Error::Forbidden(denial) => said(match denial {
                Denial::Role { .. } | Denial::Mint(_) => &codes::AUTH_FORBIDDEN,
                Denial::Quota { .. } => &codes::QUOTA_EXCEEDED,
                Denial::DiagnosticsDisabled => &codes::DIAGNOSTICS_DISABLED,
            }),
            // The sandbox's own exit and output: the user's program, not sandboxd's internals.
            Error::StartFailed(_) => said(&codes::SANDBOX_RUNTIME_ERROR),
            Error::FreezerGaveUp { .. } => said(&codes::SANDBOX_INTERNAL_ERROR),
            Error::Unreachable { id, port, .. } => told(
                &codes::SANDBOX_PROXY_ERROR,
                format!("cannot reach port {port} of sandbox {id}"),
            ),
            Error::RateLimited { .. } => said(&codes::RATE_LIMIT_EXCEEDED),
            Error::CapacityExhausted { .. } => said(&codes::POOL_CAPACITY_EXHAUSTED),
            Error::NoRoute => said(&codes::GENERAL_NOT_FOUND),
            Error::Runtime(r) => match r {
                RuntimeError::NotFound(_) => said(&codes::SANDBOX_NOT_FOUND),
                RuntimeError::ImageNotFound(_) => said(&codes::SANDBOX_IMAGE_NOT_FOUND),
                RuntimeError::Rejected(_) => said(&codes::SANDBOX_INVALID_PARAMETER),
                RuntimeError::Conflict(_) => said(&codes::SANDBOX_INVALID_STATE),
                RuntimeError::Transient(_) | RuntimeError::Engine { .. } => told(
                    &codes::SANDBOX_RUNTIME_ERROR,
                    format!("the container runtime failed; {SEE_LOG}"),
                ),
                RuntimeError::Unavailable(_) => told(
                    &codes::SANDBOX_RUNTIME_UNAVAILABLE,
                    format!("the container runtime cannot be reached; {SEE_LOG}"),
                ),
                // Says which pod and how long: the user's sandbox, not sandboxd's internals.
                RuntimeError::ReadyTimeout(_) => said(&codes::KUBERNETES_POD_READY_TIMEOUT),
            },
            Error::Store(_) => told(
                &codes::SANDBOX_INTERNAL_ERROR,
                format!("sandboxd's state store failed; {SEE_LOG}"),
            ),
            Error::Internal(_) => told(
                &codes::SANDBOX_INTERNAL_ERROR,
                format!("sandboxd failed; {SEE_LOG}"),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = LifecycleError {
            code: self.entry.code.to_owned(),
            message: self.message.clone(),
        };
        let mut resp = (self.status, Json(body)).into_response();
        resp.extensions_mut().insert(self);
        resp
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let api = ApiError::from(&self);
        if api.status.is_server_error() {
            tracing::error!(code = api.entry.code, error = %self, "request failed");
        } else if !self.is_client_error() {
            tracing::warn!(code = api.entry.code, error = %self, "request refused");
        }
        let unauthenticated = matches!(self, Error::Unauthenticated(_));
        let retry_after = match &self {
            Error::CapacityExhausted { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        let mut resp = api.into_response();
        if let Some(seconds) = retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.max(1).into());
        }
        if unauthenticated {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        resp
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

    /// One of each variant with the (status, code) it was answered with before the catalog:
    /// the wire did not change, and every code sent is catalogued with that status.
    #[test]
    fn every_variant_answers_a_catalogued_code_with_its_status() {
        use crate::orchestrator::auth::Role;
        let s = || "s".to_owned();
        let engine = |op| RuntimeError::Engine { op, message: s() };
        let cases: Vec<(Error, u16, &str)> = vec![
            (Error::no_sandbox("x"), 404, "SANDBOX::NOT_FOUND"),
            (Error::invalid("x"), 400, "SANDBOX::INVALID_PARAMETER"),
            (Error::InvalidSpec(s()), 400, "TEMPLATE::INVALID_SPEC"),
            (Error::ImportInvalid(s()), 400, "TEMPLATE::IMPORT_INVALID"),
            (Error::InvalidImage(s()), 400, "PREPULL::INVALID_IMAGE"),
            (Error::not_found(Kind::Template, "t"), 404, "TEMPLATE::NOT_FOUND"),
            (
                Error::not_found(Kind::TemplateVersion, "t"),
                404,
                "TEMPLATE::VERSION_NOT_FOUND",
            ),
            (Error::not_found(Kind::Prepull, "p"), 404, "PREPULL::NOT_FOUND"),
            (Error::not_found(Kind::Snapshot, "s"), 404, "SNAPSHOT::NOT_FOUND"),
            (
                Error::Conflict(Conflict::SnapshotInUse(s())),
                409,
                "SNAPSHOT::IN_USE",
            ),
            (
                Error::Conflict(Conflict::SnapshotNotReady(s())),
                409,
                "SNAPSHOT::NOT_READY",
            ),
            (
                Error::Conflict(Conflict::SnapshotInProgress(s())),
                409,
                "SANDBOX::INVALID_STATE",
            ),
            (
                Error::Conflict(Conflict::NotRestorable(s())),
                409,
                "SANDBOX::INVALID_STATE",
            ),
            (
                Error::not_found(Kind::Container, "c"),
                404,
                "CONTAINER::NOT_FOUND",
            ),
            (
                Error::ScopeUnsupported {
                    kind: "logs",
                    scope: s(),
                    supported: &["all"],
                },
                400,
                "DIAGNOSTICS_SCOPE_UNSUPPORTED",
            ),
            (
                Error::Forbidden(Denial::DiagnosticsDisabled),
                403,
                "DIAGNOSTICS::DISABLED",
            ),
            (
                Error::not_found(Kind::Execution, "e"),
                404,
                "EXECUTION::NOT_FOUND",
            ),
            (Error::not_found(Kind::Batch, "b"), 404, "EXECUTION::NOT_FOUND"),
            (
                Error::UnsupportedLanguage(s()),
                400,
                "EXECUTION::UNSUPPORTED_LANGUAGE",
            ),
            (
                Error::Conflict(Conflict::ExecutionNotFinished { id: s(), state: s() }),
                409,
                "EXECUTION::NOT_FINISHED",
            ),
            (
                Error::Conflict(Conflict::ExecutionFinished { id: s(), state: s() }),
                409,
                "EXECUTION::ALREADY_FINISHED",
            ),
            (
                Error::Conflict(Conflict::IsolationUnavailable),
                409,
                "EXECUTION::ISOLATION_UNAVAILABLE",
            ),
            (
                Error::Conflict(Conflict::TemplateExists(s())),
                409,
                "TEMPLATE::CONFLICT",
            ),
            (
                Error::Conflict(Conflict::TemplateNotReady(s())),
                409,
                "TEMPLATE::NOT_READY",
            ),
            (Error::InvalidMetadataFilter(s()), 400, "INVALID_METADATA_FORMAT"),
            (Error::UnsupportedField(s()), 400, "SANDBOX::API_NOT_SUPPORTED"),
            (
                Error::Unsupported(Feature::Snapshots),
                501,
                "SANDBOX::API_NOT_SUPPORTED",
            ),
            (
                Error::Unsupported(Feature::NetworkPolicy),
                501,
                "SANDBOX::API_NOT_SUPPORTED",
            ),
            (Error::not_found(Kind::Pool, "p"), 404, "POOL::NOT_FOUND"),
            (
                Error::Conflict(Conflict::PoolExists(s())),
                409,
                "POOL::ALREADY_EXISTS",
            ),
            (
                Error::Conflict(Conflict::NotAllocated(s())),
                409,
                "POOL::NOT_ALLOCATED",
            ),
            (
                Error::Conflict(Conflict::TemplateInUse(s())),
                409,
                "TEMPLATE::IN_USE",
            ),
            (
                Error::CapacityExhausted {
                    pool: s(),
                    retry_after: 3,
                },
                429,
                "POOL::CAPACITY_EXHAUSTED",
            ),
            (
                Error::HostPathNotAllowed(s()),
                403,
                "SANDBOX::HOST_PATH_NOT_ALLOWED",
            ),
            (Error::TooLarge { limit: 1 }, 413, "SANDBOX::PAYLOAD_TOO_LARGE"),
            (
                Error::Conflict(Conflict::NotRunning { id: s(), state: s() }),
                409,
                "DOCKER::SANDBOX_NOT_RUNNING",
            ),
            (
                Error::Conflict(Conflict::NotPaused { id: s(), state: s() }),
                409,
                "DOCKER::SANDBOX_NOT_PAUSED",
            ),
            (
                Error::Conflict(Conflict::DeletedWhileStarting(s())),
                409,
                "SANDBOX::INVALID_STATE",
            ),
            (
                Error::Conflict(Conflict::NoExpiry(s())),
                409,
                "SANDBOX::INVALID_STATE",
            ),
            (
                Error::Conflict(Conflict::NotAwaitingStart { id: s(), state: s() }),
                409,
                "SANDBOX::INVALID_STATE",
            ),
            (
                Error::Conflict(Conflict::NoRoute(s())),
                409,
                "SANDBOX::INVALID_STATE",
            ),
            (
                Error::Conflict(Conflict::Runtime(s())),
                409,
                "SANDBOX::INVALID_STATE",
            ),
            (
                Error::Unauthenticated(AuthFailure::Missing),
                401,
                "MISSING_API_KEY",
            ),
            (
                Error::Unauthenticated(AuthFailure::InvalidApiKey),
                401,
                "INVALID_API_KEY",
            ),
            (
                Error::Forbidden(Denial::Role {
                    role: Role::Viewer,
                    needed: Role::User,
                }),
                403,
                "AUTH::FORBIDDEN",
            ),
            (Error::StartFailed(s()), 500, "SANDBOX::RUNTIME_ERROR"),
            (
                Error::FreezerGaveUp {
                    verb: "pause",
                    tries: 5,
                },
                500,
                "SANDBOX::INTERNAL_ERROR",
            ),
            (
                Error::Unreachable {
                    id: s(),
                    port: 1,
                    reason: s(),
                },
                502,
                "SANDBOX::PROXY_ERROR",
            ),
            (Error::NoRoute, 404, "GENERAL::NOT_FOUND"),
            (
                Error::Runtime(RuntimeError::NotFound(s())),
                404,
                "SANDBOX::NOT_FOUND",
            ),
            (
                Error::Runtime(RuntimeError::ImageNotFound(s())),
                400,
                "SANDBOX::IMAGE_NOT_FOUND",
            ),
            (
                Error::Runtime(RuntimeError::Rejected(s())),
                400,
                "SANDBOX::INVALID_PARAMETER",
            ),
            (
                Error::Runtime(RuntimeError::Conflict(s())),
                409,
                "SANDBOX::INVALID_STATE",
            ),
            (
                Error::Runtime(RuntimeError::Transient(s())),
                500,
                "SANDBOX::RUNTIME_ERROR",
            ),
            (Error::Runtime(engine("x")), 500, "SANDBOX::RUNTIME_ERROR"),
            (
                Error::Runtime(RuntimeError::Unavailable(s())),
                503,
                "SANDBOX::RUNTIME_UNAVAILABLE",
            ),
            (
                Error::Runtime(RuntimeError::ReadyTimeout(s())),
                504,
                "KUBERNETES::POD_READY_TIMEOUT",
            ),
            (Error::Store(StoreError::Closed), 500, "SANDBOX::INTERNAL_ERROR"),
            (Error::Internal(s()), 500, "SANDBOX::INTERNAL_ERROR"),
        ];
        for (e, status, code) in cases {
            let api = ApiError::from(&e);
            assert_eq!((api.status.as_u16(), api.entry.code), (status, code), "{e:?}");
            assert_eq!(
                codes::lookup(code),
                Some(api.entry),
                "{code} is not in the catalog's list"
            );
            assert!(
                api.entry.has_status(status),
                "{code} is catalogued without {status}"
            );
            let resp = api.clone().into_response();
            assert_eq!(
                resp.extensions().get::<ApiError>(),
                Some(&api),
                "error_format needs it"
            );
        }
    }

    #[test]
    fn every_conflict_and_failure_has_its_code() {
        let code = |e: Error| ApiError::from(&e).entry.code;
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
            code(Error::Unauthenticated(AuthFailure::Missing)),
            "MISSING_API_KEY"
        );
        assert_eq!(code(Error::TooLarge { limit: 1 }), "SANDBOX::PAYLOAD_TOO_LARGE");
        let image = ApiError::from(&Error::Runtime(RuntimeError::ImageNotFound(
            "image \"x\" is not present".into(),
        )));
        assert_eq!(
            (image.status, image.entry.code),
            (StatusCode::BAD_REQUEST, "SANDBOX::IMAGE_NOT_FOUND")
        );
        assert!(
            image.message.contains("not present"),
            "a client's own error keeps its words"
        );
    }
}

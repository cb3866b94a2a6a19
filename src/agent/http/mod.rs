//! The agent's HTTP surface: the router, token check, and the SSE response shape. Each
//! resource has its own file with a `routes()` next to its handlers; handlers extract, call a
//! domain module, and map the result. Only this module tree sees axum.

mod code;
mod command;
pub mod error;
mod extract;
mod files;
#[doc(hidden)]
pub mod fuzz_api;
mod isolated;
mod isolated_files;
mod metrics;
mod proxy;
mod pty;
mod session;
mod transfer;
mod watch;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::{Extension, Json, Router};

use super::stream::Cursor;
use super::AppState;
use crate::wire::{ErrorCode, UnauthorizedBody};
use error::ApiError;

pub(crate) use command::__path_create_command;

pub(crate) use code::{
    __path_create_context, __path_delete_context, __path_delete_contexts_by_language, __path_get_context,
    __path_interrupt_code, __path_list_contexts, __path_list_languages, __path_run_code,
};
pub(crate) use command::{
    __path_command_events, __path_command_logs, __path_command_status, __path_interrupt_command,
    __path_write_stdin,
};
pub(crate) use files::{
    __path_file_info, __path_list_directory, __path_make_dirs, __path_move_files, __path_remove_dirs,
    __path_remove_files, __path_replace_content, __path_search_files, __path_set_permissions,
};
pub(crate) use isolated::{
    __path_create_isolated_session, __path_delete_isolated_session, __path_get_isolated_session,
    __path_isolated_capabilities, __path_isolated_run_logs, __path_isolated_run_status,
    __path_list_isolated_sessions, __path_run_isolated,
};
pub(crate) use isolated_files::{
    __path_commit_isolated_session, __path_diff_isolated_session, __path_download_isolated_file,
    __path_isolated_file_info, __path_list_isolated_directory, __path_make_isolated_dirs,
    __path_move_isolated_files, __path_remove_isolated_dirs, __path_remove_isolated_files,
    __path_replace_isolated_content, __path_search_isolated_files, __path_set_isolated_permissions,
    __path_upload_isolated_files,
};
pub(crate) use metrics::{__path_get_metrics, __path_watch_metrics};
pub(crate) use proxy::__path_proxy_port;
pub(crate) use pty::{__path_connect_pty, __path_create_pty, __path_delete_pty, __path_pty_status};
pub(crate) use session::{__path_create_session, __path_delete_session, __path_run_in_session};
pub(crate) use transfer::{
    __path_download_archive, __path_download_file, __path_extract_archive, __path_upload_files,
};
pub(crate) use watch::__path_watch_files;

/// Header carrying the access token.
pub use crate::auth::TOKEN_HEADER;

/// A router that remembers the paths it serves, so that the OpenAPI document can be checked
/// against what is really routed (`openapi::tests::every_served_route_is_documented`).
pub(crate) struct Routes {
    router: Router<AppState>,
    paths: Vec<String>,
}

impl Routes {
    pub(crate) fn new() -> Self {
        Self {
            router: Router::new(),
            paths: Vec::new(),
        }
    }

    pub(crate) fn route(mut self, path: &str, method: MethodRouter<AppState>) -> Self {
        self.paths.push(path.to_owned());
        self.router = self.router.route(path, method);
        self
    }

    pub(crate) fn merge(mut self, other: Routes) -> Self {
        self.paths.extend(other.paths);
        self.router = self.router.merge(other.router);
        self
    }

    pub(crate) fn nest(mut self, prefix: &str, other: Routes) -> Self {
        self.paths
            .extend(other.paths.iter().map(|p| format!("{prefix}{p}")));
        self.router = self.router.nest(prefix, other.router);
        self
    }
}

/// Every route of the agent, before state and layers.
fn all_routes() -> Routes {
    Routes::new()
        .route("/ping", get(ping))
        .merge(command::routes())
        .merge(code::routes())
        .merge(session::routes())
        .merge(pty::routes())
        .merge(proxy::routes())
        .merge(files::routes())
        // The same file routes, done with the fsuid/fsgid named in the path.
        .nest(crate::agent::openapi::FILESYSTEM_IDENTITY_PREFIX, files::routes())
        .merge(metrics::routes())
        .merge(isolated::routes())
}

/// The paths the agent serves, as routed (axum's syntax: `{param}`, `{*rest}`): what the
/// document check and the token walk of the security tests (`tests/it/security.rs`) go by.
#[doc(hidden)]
pub fn served_paths() -> Vec<String> {
    all_routes().paths
}

/// The complete router of the agent.
pub fn router(state: AppState) -> Router {
    let routes = all_routes().router.fallback(not_found);
    // `/proxy/{own port}/…` is served in-process by the same routes, minus the token check
    // that the request has passed already (see `proxy::SelfRoutes`).
    let inner = proxy::SelfRoutes::new(routes.clone().with_state(state.clone()));
    routes
        .layer(Extension(inner))
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// Liveness, and readiness: 503 `STARTING` while init runs the sandbox's pre-start hook.
#[utoipa::path(get, path = "/ping", responses((status = 200, description = "execd is up"),
    (status = 503, description = "the pre-start hook is running", body = crate::wire::ErrorBody)))]
pub(crate) async fn ping(State(state): State<AppState>) -> Response {
    if state.starting.load(std::sync::atomic::Ordering::Acquire) {
        // Not an `ApiError`: this 503 is expected, polled, and not worth a warning each time.
        let body = crate::wire::ErrorBody {
            code: ErrorCode::Starting,
            message: "pre-start hook running".into(),
        };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    StatusCode::OK.into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, ErrorCode::Unknown, "no such route")
}

/// Rejects requests without the right token, when one is configured. Applies to every route.
async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(expected) = &state.token {
        let given = req.headers().get(TOKEN_HEADER).map(HeaderValue::as_bytes);
        if !given.is_some_and(|g| crate::auth::constant_time_eq(g, expected.as_bytes())) {
            let text = "Unauthorized: invalid or missing header X-EXECD-ACCESS-TOKEN".to_owned();
            let body = UnauthorizedBody {
                code: ErrorCode::Unauthorized,
                message: text.clone(),
                error: text,
            };
            return (StatusCode::UNAUTHORIZED, Json(body)).into_response();
        }
    }
    next.run(req).await
}

/// `?id=` of `DELETE /command` and `DELETE /code`.
#[derive(serde::Deserialize)]
pub(crate) struct IdQuery {
    id: Option<String>,
}

/// What `DELETE /command` and `DELETE /code` share: interrupt whatever the id names (a
/// context's cell, a command, or a session, which is closed); the contract answers an unknown
/// id with a 500.
pub(crate) async fn interrupt_by_id(state: &AppState, q: IdQuery) -> Result<StatusCode, ApiError> {
    let id =
        q.id.filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::missing_query("id"))?;
    if state.interrupt(&id).await {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::runtime(format!("no such session: {id}")))
    }
}

/// A standard SSE response over a journal cursor; it ends right after the terminal event.
pub(crate) fn sse_response(cursor: Cursor) -> Response {
    let mut resp = Response::new(Body::from_stream(cursor.into_stream()));
    sse_headers(resp.headers_mut());
    resp
}

/// The headers of every SSE response: the content type, and no caching or proxy buffering.
pub(crate) fn sse_headers(headers: &mut axum::http::HeaderMap) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
}

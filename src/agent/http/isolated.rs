//! `/v1/isolated/*` routes: capabilities, sessions, runs, logs, and the files sub-API.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use super::Routes;
use crate::agent::isolated::{Started, LOG_CAP};
use crate::agent::AppState;
use crate::wire::isolated::{
    CapabilitiesResponse, CreateIsolatedSessionRequest, IsolatedBackgroundRunResponse,
    IsolatedCreateSessionResponse, IsolatedRunRequest, IsolatedRunStatus, IsolatedSessionList, SessionState,
};
use crate::wire::ErrorBody;

/// Header carrying the byte offset to pass as the next `cursor` of an isolated run's logs.
pub const ISOLATED_TAIL_CURSOR_HEADER: &str = "execd-isolated-tail-cursor";

pub(super) fn routes() -> Routes {
    Routes::new()
        .route("/v1/isolated/capabilities", get(isolated_capabilities))
        .route("/v1/isolated/sessions", get(list_isolated_sessions))
        .route("/v1/isolated/session", post(create_isolated_session))
        .route(
            "/v1/isolated/session/{sid}",
            get(get_isolated_session).delete(delete_isolated_session),
        )
        .route("/v1/isolated/session/{sid}/run", post(run_isolated))
        .route("/v1/isolated/session/{sid}/runs/{rid}", get(isolated_run_status))
        .route(
            "/v1/isolated/session/{sid}/runs/{rid}/logs",
            get(isolated_run_logs),
        )
        .merge(super::isolated_files::routes())
}

/// What this host allows; always 200.
#[utoipa::path(get, path = "/v1/isolated/capabilities",
    responses((status = 200, body = CapabilitiesResponse)))]
pub(crate) async fn isolated_capabilities(
    State(state): State<AppState>,
) -> Result<Json<CapabilitiesResponse>, ApiError> {
    Ok(Json(state.isolation.ready().await?.capabilities()))
}

/// Every live session.
#[utoipa::path(get, path = "/v1/isolated/sessions",
    responses((status = 200, body = IsolatedSessionList), (status = 503, body = ErrorBody)))]
pub(crate) async fn list_isolated_sessions(
    State(state): State<AppState>,
) -> Result<Json<IsolatedSessionList>, ApiError> {
    Ok(Json(state.isolation.ready().await?.list()?))
}

/// Creates a session and builds its jail.
#[utoipa::path(post, path = "/v1/isolated/session", request_body = CreateIsolatedSessionRequest,
    responses((status = 201, body = IsolatedCreateSessionResponse), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn create_isolated_session(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateIsolatedSessionRequest>,
) -> Result<(StatusCode, Json<IsolatedCreateSessionResponse>), ApiError> {
    let iso = state.isolation.ready().await?;
    let resp = tokio::task::spawn_blocking(move || iso.create(req))
        .await
        .map_err(|e| ApiError::runtime(format!("session start failed: {e}")))??;
    Ok((StatusCode::CREATED, Json(resp)))
}

/// A session's state and creation parameters.
#[utoipa::path(get, path = "/v1/isolated/session/{sid}", params(("sid" = String, Path)),
    responses((status = 200, body = SessionState), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn get_isolated_session(
    State(state): State<AppState>,
    Path(sid): Path<String>,
) -> Result<Json<SessionState>, ApiError> {
    Ok(Json(state.isolation.ready().await?.state(&sid)?))
}

/// Kills the session's processes and frees its upper directories.
#[utoipa::path(delete, path = "/v1/isolated/session/{sid}", params(("sid" = String, Path)),
    responses((status = 200, description = "deleted"), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn delete_isolated_session(
    State(state): State<AppState>,
    Path(sid): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.isolation.ready().await?.delete(&sid).await?;
    Ok(StatusCode::OK)
}

/// Runs code in the session: SSE like `/command`, or 202 with `background: true`.
#[utoipa::path(post, path = "/v1/isolated/session/{sid}/run", params(("sid" = String, Path)), request_body = IsolatedRunRequest,
    responses(
        (status = 200, description = "SSE stream of StreamEvent: init, stdout, then execution_complete or error", content_type = "text/event-stream", body = crate::wire::StreamEvent),
        (status = 202, body = IsolatedBackgroundRunResponse),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn run_isolated(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    ApiJson(req): ApiJson<IsolatedRunRequest>,
) -> Result<Response, ApiError> {
    let iso = state.isolation.ready().await?;
    let run_sid = sid.clone();
    let started = tokio::task::spawn_blocking(move || iso.start_run(&run_sid, req))
        .await
        .map_err(|e| ApiError::runtime(format!("run start failed: {e}")))??;
    match started {
        Started::Foreground(journal) => {
            let cursor = journal.cursor(None);
            // The contract: a client that goes away mid-run cancels it (SIGINT to the session).
            let guard = DisconnectGuard {
                state: state.clone(),
                sid,
                journal,
            };
            let stream = futures_util::StreamExt::map(cursor.into_stream(), move |chunk| {
                let _ = &guard;
                chunk
            });
            let mut resp = Response::new(Body::from_stream(stream));
            super::sse_headers(resp.headers_mut());
            Ok(resp)
        }
        Started::Background(resp) => Ok((StatusCode::ACCEPTED, Json(resp)).into_response()),
    }
}

/// Interrupts the session when a foreground run's response is dropped before its end.
struct DisconnectGuard {
    state: AppState,
    sid: String,
    journal: std::sync::Arc<crate::agent::stream::Journal>,
}

impl Drop for DisconnectGuard {
    fn drop(&mut self) {
        if !self.journal.is_finished() {
            if let Some(isolation) = self.state.isolation.now() {
                isolation.interrupt(&self.sid);
            }
        }
    }
}

/// Status of a background run.
#[utoipa::path(get, path = "/v1/isolated/session/{sid}/runs/{rid}", params(("sid" = String, Path), ("rid" = String, Path)),
    responses((status = 200, body = IsolatedRunStatus), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn isolated_run_status(
    State(state): State<AppState>,
    Path((sid, rid)): Path<(String, String)>,
) -> Result<Json<IsolatedRunStatus>, ApiError> {
    Ok(Json(state.isolation.ready().await?.run_status(&sid, &rid)?))
}

#[derive(Deserialize)]
pub(crate) struct LogCursor {
    cursor: Option<String>,
}

/// A background run's combined output from byte `cursor`, at most 16 MiB per request.
#[utoipa::path(get, path = "/v1/isolated/session/{sid}/runs/{rid}/logs",
    params(("sid" = String, Path), ("rid" = String, Path), ("cursor" = Option<u64>, Query, description = "byte offset")),
    responses((status = 200, description = "raw output; header EXECD-ISOLATED-TAIL-CURSOR is the next cursor", content_type = "text/plain"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn isolated_run_logs(
    State(state): State<AppState>,
    Path((sid, rid)): Path<(String, String)>,
    ApiQuery(q): ApiQuery<LogCursor>,
) -> Result<Response, ApiError> {
    let cursor: u64 = match q.cursor.as_deref().map(str::trim) {
        None | Some("") => 0,
        Some(c) => c
            .parse()
            .map_err(|_| ApiError::bad_request("cursor must be a non-negative byte offset"))?,
    };
    let path = state.isolation.ready().await?.run_log(&sid, &rid)?;
    let (bytes, next) = tokio::task::spawn_blocking(move || -> std::io::Result<(Vec<u8>, u64)> {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::open(&path)?;
        let len = file.metadata()?.len();
        let start = cursor.min(len);
        let want = (len - start).min(LOG_CAP) as usize;
        let mut buf = vec![0u8; want];
        let mut got = 0;
        while got < want {
            let n = file.read_at(&mut buf[got..], start + got as u64)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        buf.truncate(got);
        Ok((buf, start + got as u64))
    })
    .await
    .map_err(|e| ApiError::runtime(e.to_string()))?
    .map_err(|e| ApiError::runtime(format!("cannot read log: {e}")))?;
    let mut resp = (StatusCode::OK, Body::from(bytes)).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(ISOLATED_TAIL_CURSOR_HEADER, HeaderValue::from(next));
    Ok(resp)
}

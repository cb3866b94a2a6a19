//! `/session` routes: bash sessions that keep their state between runs.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, post};
use axum::Json;

use super::error::ApiError;
use super::extract::{ApiJson, OptionalJson};
use super::sse_response;
use super::Routes;
use crate::agent::AppState;
use crate::wire::{CreateSessionRequest, CreateSessionResponse, ErrorBody, ErrorCode, RunInSessionRequest};

pub(super) fn routes() -> Routes {
    Routes::new()
        .route("/session", post(create_session))
        .route("/session/{id}/run", post(run_in_session))
        .route("/session/{id}", delete(delete_session))
}

/// Creates a bash session.
#[utoipa::path(post, path = "/session", request_body(content = Option<CreateSessionRequest>, description = "optional; an empty body is allowed"),
    responses((status = 200, body = CreateSessionResponse), (status = 400, body = ErrorBody),
        (status = 429, description = "TOO_MANY_SESSIONS: the cap on bash sessions is reached", body = ErrorBody)))]
pub(crate) async fn create_session(
    State(state): State<AppState>,
    OptionalJson(req): OptionalJson<CreateSessionRequest>,
) -> Result<Json<CreateSessionResponse>, ApiError> {
    let sessions = state.sessions.clone();
    let session_id = tokio::task::spawn_blocking(move || sessions.create(req))
        .await
        .map_err(|e| ApiError::runtime(e.to_string()))??;
    Ok(Json(CreateSessionResponse { session_id }))
}

/// Runs shell text in a session and streams its output (stderr merged into stdout).
#[utoipa::path(post, path = "/session/{id}/run", params(("id" = String, Path)), request_body = RunInSessionRequest,
    responses((status = 200, description = "SSE stream of StreamEvent", content_type = "text/event-stream", body = crate::wire::StreamEvent),
        (status = 400, body = ErrorBody), (status = 500, description = "no such session", body = ErrorBody)))]
pub(crate) async fn run_in_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<RunInSessionRequest>,
) -> Result<Response, ApiError> {
    let sessions = state.sessions.clone();
    let journal = tokio::task::spawn_blocking(move || sessions.run(&id, req))
        .await
        .map_err(|e| ApiError::runtime(e.to_string()))??;
    let cursor = journal.cursor(None);
    Ok(sse_response(cursor))
}

/// Deletes a session and kills everything it started.
#[utoipa::path(delete, path = "/session/{id}", params(("id" = String, Path)),
    responses((status = 200, description = "deleted"), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let sessions = state.sessions.clone();
    let id2 = id.clone();
    let found = tokio::task::spawn_blocking(move || sessions.delete(&id2))
        .await
        .map_err(|e| ApiError::runtime(e.to_string()))?;
    if found {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::ContextNotFound,
            format!("session not found: {id}"),
        ))
    }
}

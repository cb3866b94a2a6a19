//! `/code` routes: code contexts (Jupyter kernels or built-in drivers) and runs in them.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery};
use super::sse_response;
use super::Routes;
use crate::agent::AppState;
use crate::wire::code::{CodeContext, CreateContextRequest, LanguageInfo, RunCodeRequest};
use crate::wire::{ErrorBody, ErrorCode};

pub(super) fn routes() -> Routes {
    Routes::new()
        .route("/code", post(run_code).delete(interrupt_code))
        .route("/code/context", post(create_context))
        .route(
            "/code/contexts",
            get(list_contexts).delete(delete_contexts_by_language),
        )
        .route("/code/contexts/{id}", get(get_context).delete(delete_context))
        .route("/code/languages", get(list_languages))
}

/// Creates a code context and starts its interpreter.
#[utoipa::path(post, path = "/code/context", request_body = CreateContextRequest,
    responses((status = 200, body = CodeContext), (status = 400, description = "bad JSON or unknown language", body = ErrorBody),
        (status = 429, description = "TOO_MANY_SESSIONS: the cap on code contexts is reached", body = ErrorBody),
        (status = 500, description = "the interpreter failed to start", body = ErrorBody)))]
pub(crate) async fn create_context(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CreateContextRequest>,
) -> Result<Json<CodeContext>, ApiError> {
    Ok(Json(state.contexts.create(&req.language, req.cwd).await?))
}

#[derive(Deserialize)]
pub(crate) struct LanguageQuery {
    language: Option<String>,
}

/// Lists contexts, all or of one language (default contexts included).
#[utoipa::path(get, path = "/code/contexts", params(("language" = Option<String>, Query)),
    responses((status = 200, body = Vec<CodeContext>)))]
pub(crate) async fn list_contexts(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<LanguageQuery>,
) -> Json<Vec<CodeContext>> {
    Json(
        state
            .contexts
            .list(q.language.as_deref().filter(|l| !l.is_empty())),
    )
}

/// Deletes every context of a language.
#[utoipa::path(delete, path = "/code/contexts", params(("language" = String, Query)),
    responses((status = 200, description = "deleted"), (status = 400, body = ErrorBody)))]
pub(crate) async fn delete_contexts_by_language(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<LanguageQuery>,
) -> Result<StatusCode, ApiError> {
    let language = q
        .language
        .filter(|l| !l.is_empty())
        .ok_or_else(|| ApiError::missing_query("language"))?;
    state.contexts.delete_language(&language).await;
    Ok(StatusCode::OK)
}

/// One context.
#[utoipa::path(get, path = "/code/contexts/{id}", params(("id" = String, Path)),
    responses((status = 200, body = CodeContext), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_context(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CodeContext>, ApiError> {
    state
        .contexts
        .get(&id)
        .map(Json)
        .ok_or_else(|| context_not_found(&id))
}

/// Deletes a context and kills its interpreter.
#[utoipa::path(delete, path = "/code/contexts/{id}", params(("id" = String, Path)),
    responses((status = 200, description = "deleted"), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_context(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if state.contexts.delete(&id).await {
        Ok(StatusCode::OK)
    } else {
        Err(context_not_found(&id))
    }
}

/// Runs code in a context (or the language's default context) and streams its events.
#[utoipa::path(post, path = "/code", request_body = RunCodeRequest,
    responses((status = 200, description = "SSE stream of StreamEvent", content_type = "text/event-stream", body = crate::wire::StreamEvent),
        (status = 400, body = ErrorBody),
        (status = 429, description = "TOO_MANY_SESSIONS: the language's default context would exceed the cap", body = ErrorBody),
        (status = 500, description = "unknown context id", body = ErrorBody)))]
pub(crate) async fn run_code(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RunCodeRequest>,
) -> Result<Response, ApiError> {
    let context = req.context.unwrap_or_default();
    let journal = state.contexts.run(context.id, context.language, req.code).await?;
    let cursor = journal.cursor(None);
    Ok(sse_response(cursor))
}

/// Interrupts the running cell of a context (it stays usable), or a command, or closes a session.
#[utoipa::path(delete, path = "/code", params(("id" = String, Query, description = "context, command or session id")),
    responses((status = 200, description = "interrupted"), (status = 400, body = ErrorBody), (status = 500, body = ErrorBody)))]
pub(crate) async fn interrupt_code(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<super::IdQuery>,
) -> Result<StatusCode, ApiError> {
    super::interrupt_by_id(&state, q).await
}

/// What this sandbox can run, and by which backend.
#[utoipa::path(get, path = "/code/languages", responses((status = 200, body = Vec<LanguageInfo>)))]
pub(crate) async fn list_languages(State(state): State<AppState>) -> Json<Vec<LanguageInfo>> {
    Json(state.contexts.languages())
}

fn context_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::ContextNotFound,
        format!("context not found: {id}"),
    )
}

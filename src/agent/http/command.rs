//! `/command` routes: run, interrupt, status, logs, replay and stdin.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use futures_util::StreamExt;
use serde::Deserialize;

use super::error::ApiError;
use super::extract::{ApiJson, ApiQuery, LastEventId};
use super::sse_response;
use super::Routes;
use crate::agent::AppState;
use crate::wire::{CommandStatusResponse, ErrorBody, ErrorCode, RunCommandRequest};

/// Header carrying the byte offset to pass as the next `cursor`.
pub const TAIL_CURSOR_HEADER: &str = "execd-commands-tail-cursor";

pub(super) fn routes() -> Routes {
    Routes::new()
        .route("/command", post(create_command).delete(interrupt_command))
        .route("/command/status/{id}", get(command_status))
        .route("/command/{id}/logs", get(command_logs))
        .route("/command/{id}/events", get(command_events))
        .route("/command/{id}/stdin", post(write_stdin))
}

/// Runs a command and streams its events.
#[utoipa::path(post, path = "/command", request_body = RunCommandRequest,
    responses(
        (status = 200, description = "SSE stream of StreamEvent: init, stdout/stderr lines, then execution_complete or error", content_type = "text/event-stream", body = crate::wire::StreamEvent),
        (status = 400, description = "invalid request", body = ErrorBody)))]
pub(crate) async fn create_command(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<RunCommandRequest>,
) -> Result<Response, ApiError> {
    // Reading EXECD_ENVS and fork/exec block for a fraction of a millisecond. They run on
    // this thread, which first hands its other tasks to another worker (`block_in_place`):
    // unlike the blocking pool, that costs no wake-up of another thread on the way in and out.
    // execd's runtime is always the multi-threaded one (src/bin/execd.rs).
    let record = tokio::task::block_in_place(|| state.commands.start(req))?;
    Ok(sse_response(record.journal.cursor(None)))
}

/// Interrupts a command (SIGTERM to its group, SIGKILL after 3 s) or closes a bash session.
#[utoipa::path(delete, path = "/command", params(("id" = String, Query, description = "command or session id")),
    responses((status = 200, description = "interrupted"), (status = 400, body = ErrorBody), (status = 500, description = "no such command or session", body = ErrorBody)))]
pub(crate) async fn interrupt_command(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<super::IdQuery>,
) -> Result<StatusCode, ApiError> {
    super::interrupt_by_id(&state, q).await
}

/// Status of a command, foreground or background.
#[utoipa::path(get, path = "/command/status/{id}", params(("id" = String, Path)),
    responses((status = 200, body = CommandStatusResponse), (status = 404, body = ErrorBody)))]
pub(crate) async fn command_status(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CommandStatusResponse>, ApiError> {
    let record = state.commands.get(&id).ok_or_else(|| {
        // The contract pairs this 404 with INVALID_REQUEST_BODY.
        ApiError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::InvalidRequestBody,
            format!("command not found: {id}"),
        )
    })?;
    Ok(Json(record.status()))
}

#[derive(Deserialize)]
pub(crate) struct CursorQuery {
    cursor: Option<String>,
}

/// Output of a background command from byte `cursor` to the current end.
#[utoipa::path(get, path = "/command/{id}/logs", params(("id" = String, Path), ("cursor" = Option<u64>, Query, description = "byte offset; past the end is clamped")),
    responses((status = 200, description = "raw output; header EXECD-COMMANDS-TAIL-CURSOR is the next cursor", content_type = "text/plain"), (status = 400, body = ErrorBody)))]
pub(crate) async fn command_logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<CursorQuery>,
) -> Result<Response, ApiError> {
    let path = state
        .commands
        .get(&id)
        .and_then(|r| r.log_path().cloned())
        .ok_or_else(|| ApiError::bad_request(format!("no background command with id {id}")))?;
    // Upstream reads a non-numeric cursor as 0.
    let cursor: u64 = q.cursor.and_then(|c| c.trim().parse().ok()).unwrap_or(0);
    let (file, start, end) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let file = std::fs::File::open(&path)?;
        let len = file.metadata()?.len();
        Ok((file, cursor.min(len), len))
    })
    .await
    .map_err(|e| ApiError::runtime(e.to_string()))?
    .map_err(|e| ApiError::runtime(format!("cannot read log: {e}")))?;
    let body = Body::from_stream(read_range(file, start, end));
    let mut resp = (StatusCode::OK, body).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(TAIL_CURSOR_HEADER, HeaderValue::from(end));
    Ok(resp)
}

/// Streams bytes `start..end` of `file` in chunks of up to 256 KiB, read off the async workers
/// (tokio's `File` reads on the blocking pool).
fn read_range(
    mut file: std::fs::File,
    start: u64,
    end: u64,
) -> impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send {
    use futures_util::future::Either;
    use std::io::Seek as _;
    use tokio::io::AsyncReadExt as _;
    match file.seek(std::io::SeekFrom::Start(start)) {
        Ok(_) => {
            let range = tokio::fs::File::from_std(file).take(end.saturating_sub(start));
            Either::Left(tokio_util::io::ReaderStream::with_capacity(range, 256 << 10))
        }
        Err(e) => Either::Right(futures_util::stream::once(std::future::ready(Err(e)))),
    }
}

#[derive(Deserialize)]
pub(crate) struct AfterQuery {
    after: Option<u64>,
}

/// Replays a command's events from the start, or after `Last-Event-ID` / `?after=`, then
/// follows live ones until the terminal event.
#[utoipa::path(get, path = "/command/{id}/events", params(("id" = String, Path), ("after" = Option<u64>, Query, description = "resume after this event id"), ("Last-Event-ID" = Option<u64>, Header, description = "resume after this event id")),
    responses((status = 200, description = "SSE stream of StreamEvent", content_type = "text/event-stream", body = crate::wire::StreamEvent), (status = 404, body = ErrorBody)))]
pub(crate) async fn command_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    last_event_id: Result<LastEventId, ApiError>,
    ApiQuery(q): ApiQuery<AfterQuery>,
) -> Result<Response, ApiError> {
    let record = state.commands.get(&id).ok_or_else(|| command_not_found(&id))?;
    // An unknown id is a 404 even when the header is malformed too.
    let LastEventId(header_after) = last_event_id?;
    let mut cursor = record.journal.cursor(header_after.or(q.after));
    // Finding a resume point inside spilled bytes reads the spill file (off the workers).
    cursor
        .seek()
        .await
        .map_err(|e| ApiError::runtime(format!("cannot read journal: {e}")))?;
    Ok(sse_response(cursor))
}

#[derive(Deserialize)]
pub(crate) struct EofQuery {
    eof: Option<bool>,
}

/// Appends the raw body to the stdin of a command started with `"stdin": true`; `?eof=true`
/// closes it afterwards.
#[utoipa::path(post, path = "/command/{id}/stdin", params(("id" = String, Path), ("eof" = Option<bool>, Query)),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "written"), (status = 404, body = ErrorBody), (status = 409, description = "stdin not open", body = ErrorBody)))]
pub(crate) async fn write_stdin(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<EofQuery>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let record = state.commands.get(&id).ok_or_else(|| command_not_found(&id))?;
    let mut chunks = body.into_data_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("cannot read body: {e}")))?;
        state.commands.write_stdin(&record, &chunk, false).await?;
    }
    state
        .commands
        .write_stdin(&record, &[], q.eof.unwrap_or(false))
        .await?;
    Ok(StatusCode::OK)
}

fn command_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::CommandNotFound,
        format!("command not found: {id}"),
    )
}

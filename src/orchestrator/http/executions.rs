//! Executions and batches: submit (to a sandbox, or one-shot from a template), read, result,
//! the SSE of a run's events, cancel, list.

use std::convert::Infallible;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt as _;

use super::extract::{Caller, JsonBody};
use super::App;
use crate::orchestrator::error::Error;
use crate::orchestrator::service::{wait_seconds, ExecutionQuery};
use crate::wire::executions::{BatchRequest, BatchSummary, Execution, ExecutionRequest, ExecutionState};

/// The submits: they take from the `exec` rate class (mounted at `/` and `/v1`, behind auth).
pub(super) fn exec_routes() -> Router<App> {
    Router::new()
        .route("/sandboxes/{id}/executions", post(create_execution))
        .route("/sandboxes/{id}/executions/batch", post(create_batch))
}

/// One-shot executions make a sandbox: the `create` rate class.
pub(super) fn create_routes() -> Router<App> {
    Router::new().route("/executions", post(create_one_shot))
}

/// The other routes of this resource (mounted at `/` and `/v1`, behind auth).
pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/executions", get(list_executions))
        .route("/executions/batches/{id}", get(get_batch))
        .route("/executions/{id}", get(get_execution).delete(cancel_execution))
        .route("/executions/{id}/status", get(get_execution))
        .route("/executions/{id}/result", get(execution_result))
        .route("/executions/{id}/events", get(execution_events))
}

/// `?wait=` of a query string.
fn wait_of(query: Option<&str>) -> Result<Option<std::time::Duration>, Error> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .find(|(k, _)| k == "wait")
        .map(|(_, v)| wait_seconds(&v))
        .transpose()
}

/// 200 when it ended within `wait`, else 202; `Location` names it either way.
fn submitted((execution, ended): (Execution, bool)) -> Response {
    let status = if ended {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    super::created(status, &format!("/v1/executions/{}", execution.id), execution)
}

#[utoipa::path(post, path = "/sandboxes/{sandboxId}/executions", request_body = crate::wire::executions::ExecutionRequest,
    params(("sandboxId" = String, Path), ("wait" = Option<f64>, Query, description = "seconds (0–300) to wait for the end")),
    responses((status = 202, description = "accepted: the Execution (`Queued` or `Running`); `Location` names it", body = crate::wire::executions::Execution,
            headers(("Location" = String, description = "`/v1/executions/{id}`"))),
        (status = 200, description = "with `wait`: it ended in time; the Execution with its output (result, text, outputs, stdout, stderr, error)", body = crate::wire::executions::Execution,
            headers(("Location" = String, description = "`/v1/executions/{id}`"))),
        (status = 400, description = "`SANDBOX::INVALID_PARAMETER`: not exactly one of code/command/argv, a type contradicting them, event with code, \
            contextId with a handler or command, a bad handler name, timeout outside 1–3600, an unknown field; \
            `EXECUTION::UNSUPPORTED_LANGUAGE`", body = crate::wire::lifecycle::LifecycleError),
        (status = 401, body = crate::wire::lifecycle::LifecycleError),
        (status = 403, description = "`AUTH::FORBIDDEN`: a viewer", body = crate::wire::lifecycle::LifecycleError),
        (status = 404, description = "`SANDBOX::NOT_FOUND` (someone else's too)", body = crate::wire::lifecycle::LifecycleError),
        (status = 409, description = "`DOCKER::SANDBOX_NOT_RUNNING` (Pending, Paused — not resumed — or Failed); `EXECUTION::ISOLATION_UNAVAILABLE`", body = crate::wire::lifecycle::LifecycleError),
        (status = 413, description = "`SANDBOX::PAYLOAD_TOO_LARGE`: code or event over 1 MiB", body = crate::wire::lifecycle::LifecycleError),
        (status = 429, description = "`RATE_LIMIT::EXCEEDED`: the exec class, or too many running executions", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn create_execution(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(sandbox_id): Path<String>,
    RawQuery(query): RawQuery,
    JsonBody(body): JsonBody<ExecutionRequest>,
) -> Result<Response, Error> {
    let wait = wait_of(query.as_deref())?;
    Ok(submitted(
        app.service
            .submit_execution(&sandbox_id, body, wait, &caller)
            .await?,
    ))
}

#[utoipa::path(post, path = "/executions", request_body = crate::wire::executions::ExecutionRequest,
    params(("wait" = Option<f64>, Query, description = "seconds (0–300) to wait for the end")),
    responses((status = 202, description = "a one-shot execution: with `poolRef` (a pool's name, or `{name}`) a member is acquired at once and released \
            after the run; with `templateId` it is `Acquiring` while a sandbox is made from the template, deleted after the run", body = crate::wire::executions::Execution,
            headers(("Location" = String, description = "`/v1/executions/{id}`"))),
        (status = 200, description = "with `wait`: it ended in time, with its output", body = crate::wire::executions::Execution,
            headers(("Location" = String, description = "`/v1/executions/{id}`"))),
        (status = 400, description = "as for a sandbox's executions; neither or both of templateId and poolRef", body = crate::wire::lifecycle::LifecycleError),
        (status = 404, description = "`TEMPLATE::NOT_FOUND`, `POOL::NOT_FOUND`", body = crate::wire::lifecycle::LifecycleError),
        (status = 429, description = "`POOL::CAPACITY_EXHAUSTED` (no idle member within the acquire timeout), with `Retry-After`; `RATE_LIMIT::EXCEEDED`", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn create_one_shot(
    State(app): State<App>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
    JsonBody(body): JsonBody<ExecutionRequest>,
) -> Result<Response, Error> {
    let wait = wait_of(query.as_deref())?;
    Ok(submitted(app.service.submit_one_shot(body, wait, &caller).await?))
}

#[utoipa::path(post, path = "/sandboxes/{sandboxId}/executions/batch", request_body = crate::wire::executions::BatchRequest,
    params(("sandboxId" = String, Path), ("wait" = Option<f64>, Query, description = "seconds (0–300) to wait for every job")),
    responses((status = 200, description = "every job ended within `wait`: the summary, results in input order", body = crate::wire::executions::BatchSummary,
            headers(("Location" = String, description = "`/v1/executions/batches/{id}`"))),
        (status = 202, description = "accepted (jobs still running): the summary so far", body = crate::wire::executions::BatchSummary,
            headers(("Location" = String, description = "`/v1/executions/batches/{id}`"))),
        (status = 400, description = "no jobs, over 100, a duplicate or missing job id, concurrency outside 1–8, or any invalid job (named by index and id): \
            nothing is started", body = crate::wire::lifecycle::LifecycleError),
        (status = 404, description = "`SANDBOX::NOT_FOUND`", body = crate::wire::lifecycle::LifecycleError),
        (status = 409, description = "`DOCKER::SANDBOX_NOT_RUNNING`", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn create_batch(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(sandbox_id): Path<String>,
    RawQuery(query): RawQuery,
    JsonBody(body): JsonBody<BatchRequest>,
) -> Result<Response, Error> {
    let wait = wait_of(query.as_deref())?;
    let (summary, ended) = app.service.submit_batch(&sandbox_id, body, wait, &caller).await?;
    let status = if ended {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let location = format!("/v1/executions/batches/{}", summary.batch_id);
    Ok(super::created(status, &location, summary))
}

#[utoipa::path(get, path = "/executions/batches/{batchId}", params(("batchId" = String, Path)),
    responses((status = 200, body = crate::wire::executions::BatchSummary),
        (status = 404, description = "`EXECUTION::NOT_FOUND` (someone else's too)", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn get_batch(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<BatchSummary>, Error> {
    Ok(Json(app.service.batch_summary(&id, &caller).await?))
}

#[utoipa::path(get, path = "/executions/{id}", params(("id" = String, Path)),
    responses((status = 200, description = "the Execution (also at `/executions/{id}/status`, seed 004's path)", body = crate::wire::executions::Execution),
        (status = 404, description = "`EXECUTION::NOT_FOUND` (someone else's too)", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn get_execution(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Execution>, Error> {
    Ok(Json(app.service.execution(&id, &caller).await?))
}

#[utoipa::path(get, path = "/executions/{id}/result", params(("id" = String, Path), ("wait" = Option<f64>, Query, description = "seconds (0–300) to wait for the end")),
    responses((status = 200, body = crate::wire::executions::ExecutionResult),
        (status = 400, description = "`wait` is not a number of seconds in 0–300", body = crate::wire::lifecycle::LifecycleError),
        (status = 404, description = "`EXECUTION::NOT_FOUND`", body = crate::wire::lifecycle::LifecycleError),
        (status = 409, description = "`EXECUTION::NOT_FINISHED`: still running after `wait`; the message names the state", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn execution_result(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, Error> {
    let wait = wait_of(query.as_deref())?;
    Ok(Json(app.service.execution_result(&id, wait, &caller).await?).into_response())
}

#[utoipa::path(delete, path = "/executions/{id}", params(("id" = String, Path)),
    responses((status = 202, description = "the run is being interrupted; it ends `Cancelled`", body = crate::wire::executions::Execution),
        (status = 403, description = "`AUTH::FORBIDDEN`: a viewer", body = crate::wire::lifecycle::LifecycleError),
        (status = 404, description = "`EXECUTION::NOT_FOUND`", body = crate::wire::lifecycle::LifecycleError),
        (status = 409, description = "`EXECUTION::ALREADY_FINISHED`", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn cancel_execution(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let execution = app.service.cancel_execution(&id, &caller).await?;
    Ok((StatusCode::ACCEPTED, Json(execution)).into_response())
}

#[utoipa::path(get, path = "/executions", params(("sandboxId" = Option<String>, Query), ("batchId" = Option<String>, Query),
        ("state" = Option<String>, Query, description = "Acquiring, Queued, Running, Succeeded, Failed, TimedOut, Cancelled or Lost (case-insensitive)"),
        ("page" = Option<u32>, Query, minimum = 1), ("pageSize" = Option<u32>, Query, minimum = 1, maximum = 200)),
    responses((status = 200, description = "the caller's executions (an admin's: everyone's), newest first; a batch's in job order", body = crate::wire::executions::ListExecutionsResponse),
        (status = 400, description = "a bad `state`, `page` or `pageSize`", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn list_executions(
    State(app): State<App>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, Error> {
    let query = list_query(query.as_deref().unwrap_or(""))?;
    Ok(Json(app.service.list_executions(query, &caller).await?).into_response())
}

/// `?sandboxId=&batchId=&state=&page=&pageSize=`.
fn list_query(query: &str) -> Result<ExecutionQuery, Error> {
    let mut q = ExecutionQuery {
        page: 1,
        page_size: 20,
        ..Default::default()
    };
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "sandboxId" | "sandbox_id" => q.sandbox_id = Some(value.into_owned()),
            "batchId" | "batch_id" => q.batch_id = Some(value.into_owned()),
            "state" => {
                q.state = Some(ExecutionState::parse(&value).ok_or_else(|| {
                    Error::invalid(format!(
                        "state must be Acquiring, Queued, Running, Succeeded, Failed, TimedOut, Cancelled or Lost, got {value:?}"
                    ))
                })?)
            }
            "page" => q.page = super::extract::page(&value)?,
            "pageSize" | "page_size" => q.page_size = super::extract::page_size(&value)?,
            _ => {}
        }
    }
    Ok(q)
}

#[utoipa::path(get, path = "/executions/{id}/events", params(("id" = String, Path),
        ("after" = Option<u64>, Query, description = "resume after this event id (as `Last-Event-ID`)")),
    responses((status = 200, description = "Server-sent events: execd's `init`, `stdout`, `stderr`, `result` events of the run, then `execution_complete` or `error` \
            (`ename` the catalog code), each with an `id:`; `Last-Event-ID` (or `after`) resumes after that id. Live while it runs; after the end, \
            replayed from the stored (capped) output, a line an event", content_type = "text/event-stream", body = crate::wire::StreamEvent),
        (status = 400, description = "`after` or `Last-Event-ID` is not an event id", body = crate::wire::lifecycle::LifecycleError),
        (status = 404, description = "`EXECUTION::NOT_FOUND`", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn execution_events(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let from_header = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let from_query = form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "after")
        .map(|(_, v)| v.into_owned());
    let after = match from_header.or(from_query) {
        Some(text) => text
            .trim()
            .parse::<u64>()
            .map_err(|_| Error::invalid(format!("Last-Event-ID must be an event id, got {text:?}")))?,
        None => 0,
    };
    let events = app.service.watch_execution(&id, after, &caller).await?;
    let events = events.map(|(n, event)| {
        Ok::<_, Infallible>(
            Event::default()
                .id(n.to_string())
                .json_data(&event)
                .unwrap_or_else(|_| Event::default().comment("unserialisable event")),
        )
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries_and_waits() {
        let q = list_query("sandboxId=s&batchId=b&state=timedout&page=2&pageSize=5").unwrap();
        assert_eq!(
            q,
            ExecutionQuery {
                sandbox_id: Some("s".into()),
                batch_id: Some("b".into()),
                state: Some(ExecutionState::TimedOut),
                page: 2,
                page_size: 5,
            }
        );
        for bad in ["state=done", "page=0", "pageSize=201"] {
            assert!(matches!(list_query(bad), Err(Error::Invalid(_))), "{bad}");
        }
        assert_eq!(wait_of(None).unwrap(), None);
        assert_eq!(
            wait_of(Some("wait=1.5")).unwrap(),
            Some(std::time::Duration::from_millis(1500))
        );
        for bad in ["wait=-1", "wait=301", "wait=x", "wait=NaN"] {
            assert!(wait_of(Some(bad)).is_err(), "{bad}");
        }
    }
}

//! Image prepull tasks: create (also from a template), list, read, delete, and the SSE of a
//! task's progress snapshots.

use std::convert::Infallible;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::StreamExt as _;

use super::extract::{Caller, JsonBody};
use super::App;
use crate::orchestrator::error::Error;
use crate::orchestrator::service::PrepullQuery;
use crate::wire::prepull::{CreatePrepullRequest, PrepullState, PrepullTask};

/// The routes that start pulls: they take from the `create` rate class (mounted at `/` and
/// `/v1`, behind auth).
pub(super) fn create_routes() -> Router<App> {
    Router::new()
        .route("/prepulls", post(create_prepull))
        .route("/templates/{id}/prepull", post(prepull_template))
}

/// The other routes of this resource (mounted at `/` and `/v1`, behind auth).
pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/prepulls", get(list_prepulls))
        .route("/prepulls/{id}", get(get_prepull).delete(delete_prepull))
        .route("/prepulls/{id}/events", get(prepull_events))
}

/// 202 with `Location` for a new task; 200 (and `Location`) for the active task of the same
/// image.
fn created((task, existing): (PrepullTask, bool)) -> Response {
    let status = if existing {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    super::created(status, &format!("/v1/prepulls/{}", task.id), task)
}

#[utoipa::path(post, path = "/prepulls", request_body = crate::wire::prepull::CreatePrepullRequest,
    responses((status = 202, description = "a new task: `Pending` (queued; at most 2 pulls run at once), or `Completed` with reason \
            `ALREADY_PRESENT` when the image is present. `Location` names it", body = crate::wire::prepull::PrepullTask,
            headers(("Location" = String, description = "`/v1/prepulls/{id}`"))),
        (status = 200, description = "the caller's task still `Pending` or `Pulling` for the same image (no second pull)", body = crate::wire::prepull::PrepullTask,
            headers(("Location" = String, description = "`/v1/prepulls/{id}`"))),
        (status = 400, description = "`PREPULL::INVALID_IMAGE`: the reference does not parse; `SANDBOX::INVALID_PARAMETER`: `timeout` outside 60–3600, \
            a bad `platform`, or an unknown field", body = crate::wire::lifecycle::LifecycleError),
        (status = 401, body = crate::wire::lifecycle::LifecycleError),
        (status = 403, description = "`AUTH::FORBIDDEN`: a viewer", body = crate::wire::lifecycle::LifecycleError),
        (status = 503, description = "`SANDBOX::RUNTIME_UNAVAILABLE`: the runtime cannot say whether the image is present", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn create_prepull(
    State(app): State<App>,
    Caller(caller): Caller,
    JsonBody(body): JsonBody<CreatePrepullRequest>,
) -> Result<Response, Error> {
    Ok(created(app.service.create_prepull(body, &caller).await?))
}

#[utoipa::path(post, path = "/templates/{idOrName}/prepull", params(("idOrName" = String, Path, description = "template id (`tpl-…`) or name")),
    responses((status = 202, description = "a prepull of the template's current-version image, with `templateId` and `templateVersion`", body = crate::wire::prepull::PrepullTask,
            headers(("Location" = String, description = "`/v1/prepulls/{id}`"))),
        (status = 200, description = "the caller's task still `Pending` or `Pulling` for that image", body = crate::wire::prepull::PrepullTask,
            headers(("Location" = String, description = "`/v1/prepulls/{id}`"))),
        (status = 400, description = "`PREPULL::INVALID_IMAGE`: the template's image does not parse", body = crate::wire::lifecycle::LifecycleError),
        (status = 401, body = crate::wire::lifecycle::LifecycleError),
        (status = 403, description = "`AUTH::FORBIDDEN`: a viewer", body = crate::wire::lifecycle::LifecycleError),
        (status = 404, description = "`TEMPLATE::NOT_FOUND`: no such template, or a private one of someone else", body = crate::wire::lifecycle::LifecycleError),
        (status = 503, description = "`SANDBOX::RUNTIME_UNAVAILABLE`", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn prepull_template(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id_or_name): Path<String>,
) -> Result<Response, Error> {
    Ok(created(app.service.prepull_template(&id_or_name, &caller).await?))
}

#[utoipa::path(get, path = "/prepulls", params(("image" = Option<String>, Query, description = "one image's tasks (normalised like a create's: `busybox` is `busybox:latest`)"),
        ("state" = Option<String>, Query, description = "`Pending`, `Pulling`, `Completed`, `Failed` or `Cancelled` (case-insensitive)"),
        ("templateId" = Option<String>, Query), ("page" = Option<u32>, Query, minimum = 1), ("pageSize" = Option<u32>, Query, minimum = 1, maximum = 200)),
    responses((status = 200, description = "the caller's tasks (an admin's: everyone's), newest first", body = crate::wire::prepull::ListPrepullsResponse),
        (status = 400, description = "a bad `state`, `page`, `pageSize` or `image`", body = crate::wire::lifecycle::LifecycleError),
        (status = 401, body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn list_prepulls(
    State(app): State<App>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, Error> {
    let query = list_query(query.as_deref().unwrap_or(""))?;
    Ok(Json(app.service.list_prepulls(query, &caller).await?).into_response())
}

/// `?image=&state=&templateId=&page=&pageSize=`.
fn list_query(query: &str) -> Result<PrepullQuery, Error> {
    let mut q = PrepullQuery {
        page: 1,
        page_size: 20,
        ..Default::default()
    };
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "image" => q.image = Some(value.into_owned()),
            "state" => {
                q.state = Some(PrepullState::parse(&value).ok_or_else(|| {
                    Error::invalid(format!(
                        "state must be Pending, Pulling, Completed, Failed or Cancelled, got {value:?}"
                    ))
                })?)
            }
            "templateId" | "template_id" => q.template_id = Some(value.into_owned()),
            "page" => q.page = super::extract::page(&value)?,
            "pageSize" | "page_size" => q.page_size = super::extract::page_size(&value)?,
            _ => {}
        }
    }
    Ok(q)
}

#[utoipa::path(get, path = "/prepulls/{id}", params(("id" = String, Path)),
    responses((status = 200, body = crate::wire::prepull::PrepullTask),
        (status = 404, description = "`PREPULL::NOT_FOUND` (someone else's too)", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn get_prepull(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    Ok(Json(app.service.prepull_task(&id, &caller).await?).into_response())
}

#[utoipa::path(delete, path = "/prepulls/{id}", params(("id" = String, Path)),
    responses((status = 204, description = "removed; a pull in flight was cancelled first (the task ended `Cancelled`, which `/events` shows). \
            The image is never deleted"),
        (status = 403, description = "`AUTH::FORBIDDEN`: a viewer", body = crate::wire::lifecycle::LifecycleError),
        (status = 404, description = "`PREPULL::NOT_FOUND`", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn delete_prepull(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    app.service.delete_prepull(&id, &caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/prepulls/{id}/events", params(("id" = String, Path)),
    responses((status = 200, description = "Server-sent events: each `data` is the PrepullTask as it is then, with `id:` a sequence number that grows \
            with each snapshot (at most one per 500 ms while pulling). Starts with the current snapshot and ends after a final one \
            (`Completed`, `Failed`, `Cancelled`); a finished task gives one event", content_type = "text/event-stream", body = crate::wire::prepull::PrepullTask),
        (status = 404, description = "`PREPULL::NOT_FOUND`", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn prepull_events(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let snapshots = app.service.watch_prepull(&id, &caller).await?;
    let events = snapshots.map(|s| {
        let event = Event::default().id(s.seq.to_string());
        Ok::<_, Infallible>(
            event
                .json_data(&s.task)
                .unwrap_or_else(|_| Event::default().comment("unserialisable snapshot")),
        )
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries() {
        let q = list_query("image=busybox&state=pulling&templateId=tpl-1&page=2&pageSize=5").unwrap();
        assert_eq!(
            q,
            PrepullQuery {
                image: Some("busybox".into()),
                state: Some(PrepullState::Pulling),
                template_id: Some("tpl-1".into()),
                page: 2,
                page_size: 5,
            }
        );
        assert_eq!(list_query("").unwrap().page_size, 20);
        for bad in ["state=done", "page=0", "pageSize=201", "pageSize=x"] {
            assert!(matches!(list_query(bad), Err(Error::Invalid(_))), "{bad}");
        }
    }
}

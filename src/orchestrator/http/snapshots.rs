//! Snapshots (upstream's routes) and forks: take a snapshot of a sandbox, list, read and
//! delete snapshots, and fork a sandbox into several.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::extract::{Caller, JsonBody, OptionalJsonBody};
use super::App;
use crate::orchestrator::auth::Perm;
use crate::orchestrator::error::Error;
use crate::orchestrator::service::SnapshotFilter;
use crate::wire::snapshots::{CreateSnapshotRequest, ForkRequest};

type Fail = crate::wire::lifecycle::LifecycleError;

/// The routes that make sandboxes or images (the `create` rate class).
pub(super) fn create_routes() -> Router<App> {
    Router::new()
        .route("/sandboxes/{id}/snapshots", post(create_snapshot))
        .route("/sandboxes/{id}/fork", post(fork))
}

/// The others (the `read` class).
pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/snapshots", get(list_snapshots))
        .route("/snapshots/{id}", get(get_snapshot).delete(delete_snapshot))
}

#[utoipa::path(post, path = "/sandboxes/{id}/snapshots", params(("id" = String, Path)),
    request_body(content = Option<crate::wire::snapshots::CreateSnapshotRequest>, description = "optional: `{name?}`"),
    responses((status = 202, description = "`Creating`: the sandbox's filesystem (volumes excluded) is being committed to `opensandbox-snapshots:<id>`, \
            the sandbox frozen meanwhile; poll GET /snapshots/{id} until `Ready` or `Failed`", body = crate::wire::snapshots::Snapshot),
        (status = 400, description = "a bad body or name", body = Fail), (status = 404, body = Fail),
        (status = 409, description = "`DOCKER::SANDBOX_NOT_RUNNING`: neither Running nor frozen (the message names the state)", body = Fail)))]
pub(crate) async fn create_snapshot(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<CreateSnapshotRequest>,
) -> Result<Response, Error> {
    caller.require(Perm::Write)?;
    let snapshot = app
        .service
        .create_snapshot(&id, body.unwrap_or_default(), &caller)
        .await?;
    let location = format!("/v1/snapshots/{}", snapshot.id);
    Ok(super::created(StatusCode::ACCEPTED, &location, snapshot))
}

#[utoipa::path(get, path = "/snapshots", params(("sandboxId" = Option<String>, Query, description = "only snapshots of this sandbox"),
        ("state" = Option<Vec<String>>, Query, description = "repeatable; OR; case-insensitive: Creating, Ready, Failed, Deleting"),
        ("name" = Option<String>, Query, description = "only snapshots with this name (exact)"),
        ("page" = Option<u32>, Query), ("pageSize" = Option<u32>, Query)),
    responses((status = 200, description = "the caller's snapshots (an admin's: everyone's), newest first", body = crate::wire::snapshots::ListSnapshotsResponse),
        (status = 400, body = Fail)))]
pub(crate) async fn list_snapshots(
    State(app): State<App>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, Error> {
    caller.require(Perm::Read)?;
    let filter = snapshot_filter(query.as_deref().unwrap_or(""))?;
    Ok(Json(app.service.list_snapshots(filter, &caller).await?).into_response())
}

/// `?sandboxId=&state=&name=&page=&pageSize=`.
fn snapshot_filter(query: &str) -> Result<SnapshotFilter, Error> {
    let mut filter = SnapshotFilter {
        page: 1,
        page_size: 20,
        ..Default::default()
    };
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "sandboxId" | "sandbox_id" => filter.sandbox_id = Some(value.into_owned()),
            "name" => filter.name = Some(value.into_owned()),
            "state" => filter.states.extend(super::extract::states(&value)),
            "page" => filter.page = super::extract::page(&value)?,
            "pageSize" | "page_size" => filter.page_size = super::extract::page_size(&value)?,
            _ => {}
        }
    }
    Ok(filter)
}

#[utoipa::path(get, path = "/snapshots/{id}", params(("id" = String, Path)),
    responses((status = 200, body = crate::wire::snapshots::Snapshot), (status = 404, description = "`SNAPSHOT::NOT_FOUND` (someone else's too)", body = Fail)))]
pub(crate) async fn get_snapshot(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    caller.require(Perm::Read)?;
    Ok(Json(app.service.get_snapshot(&id, &caller).await?).into_response())
}

#[utoipa::path(delete, path = "/snapshots/{id}", params(("id" = String, Path)),
    responses((status = 204, description = "its image removed and the snapshot forgotten"), (status = 404, description = "`SNAPSHOT::NOT_FOUND`", body = Fail),
        (status = 409, description = "`SNAPSHOT::IN_USE`: sandboxes made from it exist; `SNAPSHOT::NOT_READY`: it is still being taken", body = Fail)))]
pub(crate) async fn delete_snapshot(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    caller.require(Perm::Write)?;
    app.service.delete_snapshot(&id, &caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/sandboxes/{id}/fork", params(("id" = String, Path)), request_body = crate::wire::snapshots::ForkRequest,
    responses((status = 201, description = "one snapshot of the sandbox taken, then `count` sandboxes made from it, all running: each has the source's filesystem \
            (volumes excluded), entrypoint, environment, limits, lifetime and pause policy, and goes its own way from there", body = crate::wire::snapshots::ForkResponse),
        (status = 400, description = "`count` outside 1–20, bad metadata", body = Fail), (status = 403, description = "`QUOTA::EXCEEDED`: the children would pass the caller's quota", body = Fail),
        (status = 404, body = Fail), (status = 409, description = "`DOCKER::SANDBOX_NOT_RUNNING`", body = Fail),
        (status = 500, description = "a sandbox did not come up; the others and the snapshot were deleted", body = Fail)))]
pub(crate) async fn fork(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ForkRequest>,
) -> Result<Response, Error> {
    caller.require(Perm::Write)?;
    let forked = app.service.fork(&id, body, &caller).await?;
    let location = format!("/v1/snapshots/{}", forked.snapshot_id);
    Ok(super::created(StatusCode::CREATED, &location, forked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_filters() {
        let f = snapshot_filter("sandboxId=s1&state=Ready&state=failed&name=n&page=2&pageSize=5").unwrap();
        assert_eq!(f.sandbox_id.as_deref(), Some("s1"));
        assert_eq!(f.states, ["Ready", "failed"]);
        assert_eq!(f.name.as_deref(), Some("n"));
        assert_eq!((f.page, f.page_size), (2, 5));
        assert!(snapshot_filter("page=0").is_err());
        assert!(snapshot_filter("pageSize=201").is_err());
    }
}

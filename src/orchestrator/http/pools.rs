//! `/v1/pools`: warm pools (create, list, read, update the capacity, delete), acquire from
//! one, and `POST /sandboxes/{id}/release`. Writing pools needs the admin role; reading them
//! (`get_sandbox_stats()`), acquiring and releasing need what creating a sandbox needs.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::extract::{Caller, JsonBody};
use super::App;
use crate::orchestrator::auth::Perm;
use crate::orchestrator::error::Error;
use crate::wire::pools::{AcquireRequest, CreatePoolRequest, UpdatePoolRequest};

type Fail = crate::wire::lifecycle::LifecycleError;

/// `POST /pools` and acquire, apart: they take from the `create` rate class.
pub(super) fn create_routes() -> Router<App> {
    Router::new()
        .route("/pools", post(create_pool))
        .route("/pools/{name}/acquire", post(acquire))
}

/// The other routes (behind auth, `read` class).
pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/pools", get(list_pools))
        .route(
            "/pools/{name}",
            get(get_pool).put(update_pool).delete(delete_pool),
        )
        .route("/sandboxes/{id}/release", post(release))
}

#[utoipa::path(post, path = "/pools", request_body = crate::wire::pools::CreatePoolRequest,
    responses((status = 201, description = "the pool; the reconciler starts warming members", body = crate::wire::pools::PoolResponse),
        (status = 400, description = "`SANDBOX::INVALID_PARAMETER`: a bad name or capacity (`bufferMin ≤ bufferMax ≤ poolMax ≤ --pool-max-members`, `poolMin ≤ poolMax`), \
            both or neither of `template` and `templateId`, `Noop` without `dedicatedOwner`, or a member spec that does not validate", body = Fail),
        (status = 401, body = Fail), (status = 403, description = "`AUTH::FORBIDDEN`: writing pools needs the admin role", body = Fail),
        (status = 404, description = "`TEMPLATE::NOT_FOUND`: no such template", body = Fail),
        (status = 409, description = "`POOL::ALREADY_EXISTS`: the name is taken", body = Fail)))]
pub(crate) async fn create_pool(
    State(app): State<App>,
    Caller(caller): Caller,
    JsonBody(body): JsonBody<CreatePoolRequest>,
) -> Result<Response, Error> {
    caller.require(Perm::Admin)?;
    let pool = app.service.create_pool(body, &caller).await?;
    let location = format!("/v1/pools/{}", pool.name);
    Ok(super::created(StatusCode::CREATED, &location, pool))
}

#[utoipa::path(get, path = "/pools",
    responses((status = 200, description = "every pool, by name (no pagination, as upstream)", body = crate::wire::pools::ListPoolsResponse),
        (status = 401, body = Fail)))]
pub(crate) async fn list_pools(State(app): State<App>, Caller(caller): Caller) -> Result<Response, Error> {
    caller.require(Perm::Read)?;
    Ok(Json(app.service.list_pools().await?).into_response())
}

#[utoipa::path(get, path = "/pools/{name}", params(("name" = String, Path)),
    responses((status = 200, description = "the pool and its counts", body = crate::wire::pools::PoolResponse),
        (status = 401, body = Fail), (status = 404, description = "`POOL::NOT_FOUND`", body = Fail)))]
pub(crate) async fn get_pool(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<Response, Error> {
    caller.require(Perm::Read)?;
    Ok(Json(app.service.get_pool(&name).await?).into_response())
}

#[utoipa::path(put, path = "/pools/{name}", params(("name" = String, Path)), request_body = crate::wire::pools::UpdatePoolRequest,
    responses((status = 200, description = "the pool with its new capacity; the reconciler scales to it (down: idle members only)", body = crate::wire::pools::PoolResponse),
        (status = 400, body = Fail), (status = 401, body = Fail), (status = 403, body = Fail),
        (status = 404, description = "`POOL::NOT_FOUND`", body = Fail)))]
pub(crate) async fn update_pool(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<UpdatePoolRequest>,
) -> Result<Response, Error> {
    caller.require(Perm::Admin)?;
    Ok(Json(app.service.update_pool(&name, body).await?).into_response())
}

#[utoipa::path(delete, path = "/pools/{name}", params(("name" = String, Path)),
    responses((status = 204, description = "deleted: idle and warming members removed; allocated sandboxes keep running, detached"),
        (status = 401, body = Fail), (status = 403, body = Fail), (status = 404, description = "`POOL::NOT_FOUND`", body = Fail)))]
pub(crate) async fn delete_pool(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, Error> {
    caller.require(Perm::Admin)?;
    app.service.delete_pool(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/pools/{name}/acquire", params(("name" = String, Path)), request_body = crate::wire::pools::AcquireRequest,
    responses((status = 201, description = "a running sandbox made of an idle member, with `allocation`", body = crate::wire::lifecycle::Sandbox),
        (status = 400, body = Fail), (status = 401, body = Fail), (status = 403, description = "`AUTH::FORBIDDEN` or `QUOTA::EXCEEDED`", body = Fail),
        (status = 404, description = "`POOL::NOT_FOUND`", body = Fail),
        (status = 429, description = "`POOL::CAPACITY_EXHAUSTED`: nothing idle, and nothing became idle within the acquire timeout; retry after `Retry-After` seconds", body = Fail,
            headers(("Retry-After" = u64, description = "whole seconds: the acquire timeout")))))]
pub(crate) async fn acquire(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody<AcquireRequest>,
) -> Result<Response, Error> {
    caller.require(Perm::Write)?;
    let sandbox = app.service.acquire_from_pool(&name, body, &caller).await?;
    let location = format!("/v1/sandboxes/{}", sandbox.id);
    Ok(super::created(StatusCode::CREATED, &location, sandbox))
}

#[utoipa::path(post, path = "/sandboxes/{id}/release", params(("id" = String, Path)),
    responses((status = 202, description = "released: the sandbox is Terminated (`RELEASED`) and its member recycled by the pool's strategy"),
        (status = 401, body = Fail), (status = 404, body = Fail),
        (status = 409, description = "`POOL::NOT_ALLOCATED`: the sandbox was not acquired from a pool (or is released already)", body = Fail)))]
pub(crate) async fn release(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    caller.require(Perm::Write)?;
    app.service.release(&id, &caller).await?;
    Ok(StatusCode::ACCEPTED)
}

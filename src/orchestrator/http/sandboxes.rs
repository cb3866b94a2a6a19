//! The sandbox resource: create, list, read, delete, metadata, pause, resume, renew and
//! endpoints.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};

use super::extract::{Caller, JsonBody, OptionalJsonBody};
use super::App;
use crate::orchestrator::auth::Perm;
use crate::orchestrator::error::Error;
use crate::orchestrator::service::ListFilter;
use crate::orchestrator::spec;

/// The header a create is attributed to a business domain by (seed 004).
const BUSINESS_DOMAIN: &str = "x-business-domain";
use crate::wire::lifecycle::{CreateSandboxRequest, PauseRequest, RenewExpiration};

/// `POST /sandboxes`, apart from the rest: it takes from the `create` rate class (mounted at
/// `/` and `/v1`, behind auth).
pub(super) fn create_routes() -> Router<App> {
    Router::new().route("/sandboxes", post(create))
}

/// The other routes of this resource (mounted at `/` and `/v1`, behind auth).
pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/sandboxes", get(list))
        .route("/sandboxes/{id}", get(get_one).delete(delete))
        .route("/sandboxes/{id}/metadata", patch(patch_metadata))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/start", post(start))
        .route("/sandboxes/{id}/renew-expiration", post(renew))
        .route("/sandboxes/{id}/endpoints/{port}", get(endpoint))
}

#[utoipa::path(post, path = "/sandboxes", request_body = crate::wire::lifecycle::CreateSandboxRequest,
    params(("X-Business-Domain" = Option<String>, Header, description = "recorded as the sandbox's `businessDomain` (1–63 of `a-z 0-9 -`) and filterable")),
    responses((status = 202, description = "running: execd answered /ping; owned by the caller. With `snapshotId`: made from the snapshot's image, with its source's \
            entrypoint and environment unless given", body = crate::wire::lifecycle::CreateSandboxResponse),
        (status = 400, description = "invalid request, unsupported field, a bad `X-Business-Domain`, an image that cannot be had, or both `image` and `snapshotId`", body = crate::wire::lifecycle::LifecycleError),
        (status = 404, description = "`SNAPSHOT::NOT_FOUND`: no such snapshot of the caller's", body = crate::wire::lifecycle::LifecycleError),
        (status = 409, description = "`SNAPSHOT::NOT_READY`: the snapshot is not Ready", body = crate::wire::lifecycle::LifecycleError),
        (status = 401, body = crate::wire::lifecycle::LifecycleError),
        (status = 403, description = "`AUTH::FORBIDDEN` (a viewer) or `QUOTA::EXCEEDED` (the user owns as many sandboxes as it may)", body = crate::wire::lifecycle::LifecycleError),
        (status = 429, description = "`RATE_LIMIT::EXCEEDED`: the caller's `create` class is spent (a create refused by validation spends a token too); \
            `Retry-After` says when to retry", body = crate::wire::lifecycle::LifecycleError,
            headers(("Retry-After" = u64, description = "whole seconds, at least 1"), ("RateLimit-Policy" = String, description = "`\"create\";q=<burst>;w=<seconds>`"),
                ("RateLimit" = String, description = "`\"create\";r=0;t=<seconds>`"))),
        (status = 500, description = "the sandbox failed to start (its last output in the message)", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn create(
    State(app): State<App>,
    Caller(caller): Caller,
    headers: HeaderMap,
    JsonBody(body): JsonBody<CreateSandboxRequest>,
) -> Result<Response, Error> {
    caller.require(Perm::Write)?;
    let domain = headers
        .get(BUSINESS_DOMAIN)
        .map(|v| spec::business_domain(v.to_str().unwrap_or("\u{fffd}")))
        .transpose()?;
    let created = app.service.create(body, &caller, domain).await?;
    let location = format!("/v1/sandboxes/{}", created.id);
    Ok(super::created(StatusCode::ACCEPTED, &location, created))
}

#[utoipa::path(get, path = "/sandboxes", params(("state" = Option<Vec<String>>, Query, description = "repeatable; OR; case-insensitive"),
        ("metadata" = Option<String>, Query, description = "url-encoded `k=v&k2=v2`; AND"), ("page" = Option<u32>, Query), ("pageSize" = Option<u32>, Query),
        ("owner" = Option<String>, Query, description = "admins only: one owner's sandboxes (`*`: everyone's, the admin default); others see only their own"),
        ("businessDomain" = Option<String>, Query, description = "only sandboxes created under this `X-Business-Domain`"),
        ("name" = Option<String>, Query, description = "only sandboxes with this display name (exact)")),
    responses((status = 200, description = "the caller's sandboxes (an admin's: everyone's)", body = crate::wire::lifecycle::ListSandboxesResponse), (status = 400, body = crate::wire::lifecycle::LifecycleError),
        (status = 403, description = "`owner` of someone else, asked by a non-admin", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn list(
    State(app): State<App>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, Error> {
    caller.require(Perm::Read)?;
    let filter = list_filter(query.as_deref().unwrap_or(""))?;
    Ok(Json(app.service.list(filter, &caller).await?).into_response())
}

/// `?state=a&state=b&metadata=k%3Dv%26k2%3Dv2&page=1&pageSize=20`.
fn list_filter(query: &str) -> Result<ListFilter, Error> {
    let mut filter = ListFilter {
        page: 1,
        page_size: 20,
        ..Default::default()
    };
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "state" => filter.states.extend(super::extract::states(&value)),
            "metadata" => {
                for (k, v) in form_urlencoded::parse(value.as_bytes()) {
                    if k.is_empty() {
                        return Err(Error::InvalidMetadataFilter(format!(
                            "metadata filter {value:?} must be k=v pairs joined by &"
                        )));
                    }
                    filter.metadata.push((k.into_owned(), v.into_owned()));
                }
            }
            "page" => filter.page = super::extract::page(&value)?,
            "owner" => filter.owner = Some(value.into_owned()),
            "name" => filter.name = Some(value.into_owned()),
            "businessDomain" | "business_domain" => {
                filter.business_domain = Some(spec::business_domain(&value)?)
            }
            "pageSize" | "page_size" => filter.page_size = super::extract::page_size(&value)?,
            _ => {}
        }
    }
    Ok(filter)
}

#[utoipa::path(get, path = "/sandboxes/{id}", params(("id" = String, Path)),
    responses((status = 200, body = crate::wire::lifecycle::Sandbox), (status = 404, body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn get_one(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    caller.require(Perm::Read)?;
    Ok(Json(app.service.get(&id, &caller).await?).into_response())
}

#[utoipa::path(delete, path = "/sandboxes/{id}", params(("id" = String, Path)),
    responses((status = 204, description = "container killed and removed"), (status = 404, body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn delete(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    caller.require(Perm::Write)?;
    app.service.delete(&id, &caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(patch, path = "/sandboxes/{id}/metadata", params(("id" = String, Path)), request_body(content = Object, description = "JSON merge patch: string values set, null deletes"),
    responses((status = 200, body = crate::wire::lifecycle::Sandbox), (status = 400, body = crate::wire::lifecycle::LifecycleError), (status = 404, body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn patch_metadata(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<serde_json::Value>,
) -> Result<Response, Error> {
    caller.require(Perm::Write)?;
    let serde_json::Value::Object(patch) = patch else {
        return Err(Error::invalid("the metadata patch must be a JSON object"));
    };
    Ok(Json(app.service.patch_metadata(&id, patch, &caller).await?).into_response())
}

#[utoipa::path(post, path = "/sandboxes/{id}/pause", params(("id" = String, Path)),
    request_body(content = Option<crate::wire::lifecycle::PauseRequest>, description = "optional (upstream sends none): `{\"snapshotType\": \"Freeze\"|\"Rootfs\"}` overrides the sandbox's `pausePolicy` for this pause"),
    responses((status = 202, description = "paused. Freeze: every process frozen (a freeze the cgroup v1 freezer gives up on while processes start is retried: 5 tries over about 2 s). \
            Rootfs: the filesystem committed (volumes excluded) and the container removed: `Paused`, reason `HIBERNATED`"),
        (status = 400, description = "a bad body", body = crate::wire::lifecycle::LifecycleError),
        (status = 404, body = crate::wire::lifecycle::LifecycleError), (status = 409, description = "`DOCKER::SANDBOX_NOT_RUNNING`: not running (the message names the state; a pause in flight is `Pausing`); \
            `SANDBOX::INVALID_STATE`: a snapshot of it is being taken", body = crate::wire::lifecycle::LifecycleError),
        (status = 500, description = "`SANDBOX::INTERNAL_ERROR`: the freezer failed on every try; the sandbox stays Running", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn pause(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    OptionalJsonBody(body): OptionalJsonBody<PauseRequest>,
) -> Result<StatusCode, Error> {
    caller.require(Perm::Write)?;
    let mode = body.and_then(|b| b.snapshot_type);
    app.service.pause(&id, mode, &caller).await?;
    Ok(StatusCode::ACCEPTED)
}

#[utoipa::path(post, path = "/sandboxes/{id}/resume", params(("id" = String, Path)),
    responses((status = 202, description = "running again: thawed (retried as pause is), or, after a Rootfs pause, created again from the committed filesystem with the same id, token, \
            environment, entrypoint and volumes (processes start afresh; endpoints may change)"), (status = 404, body = crate::wire::lifecycle::LifecycleError),
        (status = 409, description = "`DOCKER::SANDBOX_NOT_PAUSED`: not paused (the message names the state)", body = crate::wire::lifecycle::LifecycleError),
        (status = 500, description = "`SANDBOX::INTERNAL_ERROR`: the freezer failed on every try; the sandbox stays Paused", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn resume(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    caller.require(Perm::Write)?;
    app.service.resume(&id, &caller).await?;
    Ok(StatusCode::ACCEPTED)
}

#[utoipa::path(post, path = "/sandboxes/{id}/start", params(("id" = String, Path)),
    responses((status = 202, description = "started: a sandbox created with `extensions[\"sandboxd.autoStart\"]=\"false\"` (`Pending`, reason `AWAITING_START`)             runs, and its execd answered /ping", body = crate::wire::lifecycle::Sandbox),
        (status = 404, body = crate::wire::lifecycle::LifecycleError),
        (status = 409, description = "`SANDBOX::INVALID_STATE`: not awaiting start (already started, or starting; the message names the state)", body = crate::wire::lifecycle::LifecycleError),
        (status = 500, description = "the sandbox failed to start (its last output in the message); it stays `Failed`, reason `START_FAILED`", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn start(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    caller.require(Perm::Write)?;
    let sandbox = app.service.start_sandbox(&id, &caller).await?;
    Ok((StatusCode::ACCEPTED, Json(sandbox)).into_response())
}

#[utoipa::path(post, path = "/sandboxes/{id}/renew-expiration", params(("id" = String, Path)), request_body = crate::wire::lifecycle::RenewExpiration,
    responses((status = 200, body = crate::wire::lifecycle::RenewExpiration), (status = 400, description = "not RFC 3339, or not in the future", body = crate::wire::lifecycle::LifecycleError),
        (status = 404, body = crate::wire::lifecycle::LifecycleError), (status = 409, description = "manual-cleanup sandbox", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn renew(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RenewExpiration>,
) -> Result<Response, Error> {
    caller.require(Perm::Write)?;
    Ok(Json(app.service.renew(&id, body, &caller).await?).into_response())
}

#[utoipa::path(get, path = "/sandboxes/{id}/endpoints/{port}", params(("id" = String, Path), ("port" = u16, Path),
        ("use_server_proxy" = Option<bool>, Query), ("expires" = Option<i64>, Query, description = "refused: no signed endpoints on Docker")),
    responses((status = 200, body = crate::wire::lifecycle::Endpoint), (status = 400, body = crate::wire::lifecycle::LifecycleError), (status = 404, body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn endpoint(
    State(app): State<App>,
    Caller(caller): Caller,
    Path((id, port)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, Error> {
    caller.require(Perm::Read)?;
    let (mut use_server_proxy, mut expires) = (false, None);
    for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "use_server_proxy" | "useServerProxy" => {
                use_server_proxy = match v.to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" | "" => false,
                    other => {
                        return Err(Error::invalid(format!(
                            "use_server_proxy must be a boolean, got {other:?}"
                        )))
                    }
                }
            }
            "expires" => expires = Some(v.into_owned()),
            _ => {}
        }
    }
    Ok(Json(
        app.service
            .endpoint(&id, &port, use_server_proxy, expires.as_deref(), &caller)
            .await?,
    )
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_filters() {
        let f = list_filter("state=Running&state=paused&metadata=team%3Dml%26env%3Dprod&page=2&pageSize=5")
            .unwrap();
        assert_eq!(f.states, ["Running", "paused"]);
        assert_eq!(
            f.metadata,
            [("team".into(), "ml".into()), ("env".into(), "prod".into())]
        );
        assert_eq!((f.page, f.page_size), (2, 5));
        assert!(list_filter("page=0").is_err());
        assert!(list_filter("pageSize=201").is_err());
        assert!(matches!(
            list_filter("metadata=%3Dx").unwrap_err(),
            Error::InvalidMetadataFilter(_)
        ));
    }
}

//! `/v1/templates`: create (either upstream's or the versioned shape), list, read, update
//! (a new version when the spec changed), delete, versions, rollback, build logs.

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::extract::{Caller, JsonBody};
use super::App;
use crate::orchestrator::auth::Perm;
use crate::orchestrator::error::Error;
use crate::orchestrator::service::TemplateFilter;
use crate::wire::templates::{CreateTemplateRequest, RollbackRequest, UpdateTemplateRequest};

/// Header of `PUT`: whether the update made a version.
const VERSION_CREATED: &str = "x-template-version-created";

/// `POST /templates`, apart: it takes from the `create` rate class.
pub(super) fn create_routes() -> Router<App> {
    Router::new().route("/templates", post(create))
}

/// The other routes (behind auth, `read` class).
pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/templates", get(list))
        .route("/templates/{id}", get(get_one).put(update).delete(delete))
        .route("/templates/{id}/versions", get(versions))
        .route("/templates/{id}/versions/{version}", get(version))
        .route("/templates/{id}/versions/{version}/build-log", get(build_log))
        .route("/templates/{id}/rollback", post(rollback))
}

type Fail = crate::wire::lifecycle::LifecycleError;

#[utoipa::path(post, path = "/templates", request_body = crate::wire::templates::CreateTemplateRequest,
    responses((status = 201, description = "the template at version 1 (`status.phase` Pending when it has an installCommand to build, else Succeeded)", body = crate::wire::templates::Template),
        (status = 400, description = "`TEMPLATE::INVALID_SPEC` (a spec rule, naming the field) or `SANDBOX::INVALID_PARAMETER` (a bad name, mixed shapes, an unknown field)", body = Fail),
        (status = 401, body = Fail), (status = 403, description = "`AUTH::FORBIDDEN`: writing templates needs the admin role", body = Fail),
        (status = 409, description = "`TEMPLATE::CONFLICT`: the name is taken", body = Fail)))]
pub(crate) async fn create(
    State(app): State<App>,
    Caller(caller): Caller,
    JsonBody(body): JsonBody<CreateTemplateRequest>,
) -> Result<Response, Error> {
    caller.require(Perm::Admin)?;
    let template = app.service.create_template(body, &caller).await?;
    let location = HeaderValue::from_str(&format!("/v1/templates/{}", template.template_id)).ok();
    let mut resp = (StatusCode::CREATED, Json(template)).into_response();
    if let Some(location) = location {
        resp.headers_mut().insert(header::LOCATION, location);
    }
    Ok(resp)
}

#[utoipa::path(get, path = "/templates", params(("tag" = Option<String>, Query), ("search" = Option<String>, Query, description = "case-insensitive substring of name, displayName or description"),
        ("metadata" = Option<String>, Query, description = "url-encoded `k=v&k2=v2`; AND"), ("page" = Option<u32>, Query), ("pageSize" = Option<u32>, Query, description = "1–200, default 20")),
    responses((status = 200, description = "templates the caller may read, by name", body = crate::wire::templates::ListTemplatesResponse),
        (status = 400, body = Fail), (status = 401, body = Fail)))]
pub(crate) async fn list(
    State(app): State<App>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, Error> {
    caller.require(Perm::Read)?;
    let mut filter = TemplateFilter {
        page: 1,
        page_size: 20,
        ..TemplateFilter::default()
    };
    for (key, value) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "tag" => filter.tag = Some(value.into_owned()),
            "search" => filter.search = Some(value.into_owned()),
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
            "page" => filter.page = page(&value)?,
            "pageSize" | "page_size" => filter.page_size = page_size(&value)?,
            _ => {}
        }
    }
    Ok(Json(app.service.list_templates(filter, &caller).await?).into_response())
}

/// `page`: an integer ≥ 1.
pub(super) fn page(value: &str) -> Result<u32, Error> {
    value
        .parse()
        .ok()
        .filter(|&p| p >= 1)
        .ok_or_else(|| Error::invalid(format!("page must be an integer ≥ 1, got {value:?}")))
}

/// `pageSize`: 1–200.
pub(super) fn page_size(value: &str) -> Result<u32, Error> {
    value
        .parse()
        .ok()
        .filter(|p| (1..=200).contains(p))
        .ok_or_else(|| Error::invalid(format!("pageSize must be an integer 1–200, got {value:?}")))
}

/// A version number in a path: an integer ≥ 1.
fn version_number(value: &str) -> Result<u32, Error> {
    value
        .parse()
        .ok()
        .filter(|&v| v >= 1)
        .ok_or_else(|| Error::invalid(format!("version must be an integer ≥ 1, got {value:?}")))
}

#[utoipa::path(get, path = "/templates/{idOrName}", params(("idOrName" = String, Path, description = "`tpl-<uuid>` or the name")),
    responses((status = 200, description = "the template with its current spec", body = crate::wire::templates::Template),
        (status = 401, body = Fail), (status = 404, description = "`TEMPLATE::NOT_FOUND` (also someone else's private template)", body = Fail)))]
pub(crate) async fn get_one(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    caller.require(Perm::Read)?;
    Ok(Json(app.service.template(&id, &caller).await?).into_response())
}

#[utoipa::path(put, path = "/templates/{idOrName}", params(("idOrName" = String, Path)), request_body = crate::wire::templates::UpdateTemplateRequest,
    responses((status = 200, description = "the template; a new version only if `spec` differs from the latest (`X-Template-Version-Created`)", body = crate::wire::templates::Template,
            headers(("X-Template-Version-Created" = bool, description = "`true` when a version was made"))),
        (status = 400, body = Fail), (status = 401, body = Fail), (status = 403, body = Fail), (status = 404, body = Fail),
        (status = 409, description = "another update made a version first: read it again", body = Fail)))]
pub(crate) async fn update(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateTemplateRequest>,
) -> Result<Response, Error> {
    caller.require(Perm::Admin)?;
    let (template, created) = app.service.update_template(&id, body, &caller).await?;
    let mut resp = Json(template).into_response();
    resp.headers_mut().insert(
        VERSION_CREATED,
        HeaderValue::from_static(if created { "true" } else { "false" }),
    );
    Ok(resp)
}

#[utoipa::path(delete, path = "/templates/{idOrName}", params(("idOrName" = String, Path)),
    responses((status = 204, description = "deleted with its versions; sandboxes made from it keep running"),
        (status = 401, body = Fail), (status = 403, body = Fail), (status = 404, body = Fail)))]
pub(crate) async fn delete(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Error> {
    caller.require(Perm::Admin)?;
    app.service.delete_template(&id, &caller).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/templates/{idOrName}/versions", params(("idOrName" = String, Path), ("page" = Option<u32>, Query), ("pageSize" = Option<u32>, Query)),
    responses((status = 200, description = "the version history, newest first", body = crate::wire::templates::ListTemplateVersionsResponse),
        (status = 400, body = Fail), (status = 401, body = Fail), (status = 404, body = Fail)))]
pub(crate) async fn versions(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, Error> {
    caller.require(Perm::Read)?;
    let (mut p, mut size) = (1, 20);
    for (key, value) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "page" => p = page(&value)?,
            "pageSize" | "page_size" => size = page_size(&value)?,
            _ => {}
        }
    }
    Ok(Json(app.service.template_versions(&id, p, size, &caller).await?).into_response())
}

#[utoipa::path(get, path = "/templates/{idOrName}/versions/{version}", params(("idOrName" = String, Path), ("version" = u32, Path, description = "≥ 1")),
    responses((status = 200, description = "one version", body = crate::wire::templates::TemplateVersion),
        (status = 400, description = "the version is not an integer ≥ 1", body = Fail), (status = 401, body = Fail),
        (status = 404, description = "`TEMPLATE::NOT_FOUND` or `TEMPLATE::VERSION_NOT_FOUND`", body = Fail)))]
pub(crate) async fn version(
    State(app): State<App>,
    Caller(caller): Caller,
    Path((id, version)): Path<(String, String)>,
) -> Result<Response, Error> {
    caller.require(Perm::Read)?;
    let version = version_number(&version)?;
    Ok(Json(app.service.template_version(&id, version, &caller).await?).into_response())
}

#[utoipa::path(get, path = "/templates/{idOrName}/versions/{version}/build-log", params(("idOrName" = String, Path), ("version" = u32, Path)),
    responses((status = 200, description = "the install command's output (empty when the version had nothing to build)", content_type = "text/plain"),
        (status = 400, body = Fail), (status = 401, body = Fail), (status = 404, body = Fail)))]
pub(crate) async fn build_log(
    State(app): State<App>,
    Caller(caller): Caller,
    Path((id, version)): Path<(String, String)>,
) -> Result<Response, Error> {
    caller.require(Perm::Read)?;
    let version = version_number(&version)?;
    let log = app.service.build_log(&id, version, &caller).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], log).into_response())
}

#[utoipa::path(post, path = "/templates/{idOrName}/rollback", params(("idOrName" = String, Path)), request_body = crate::wire::templates::RollbackRequest,
    responses((status = 200, description = "the target's spec as a new version (none when it already is the latest's)", body = crate::wire::templates::RollbackResult),
        (status = 400, body = Fail), (status = 401, body = Fail), (status = 403, body = Fail),
        (status = 404, description = "`TEMPLATE::NOT_FOUND` or `TEMPLATE::VERSION_NOT_FOUND` (the target)", body = Fail), (status = 409, body = Fail)))]
pub(crate) async fn rollback(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RollbackRequest>,
) -> Result<Response, Error> {
    caller.require(Perm::Admin)?;
    Ok(Json(app.service.rollback_template(&id, body, &caller).await?).into_response())
}

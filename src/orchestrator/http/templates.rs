//! `/v1/templates`: create (either upstream's or the versioned shape), list, read, update
//! (a new version when the spec changed), delete, versions, rollback, build logs.

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::extract::{Caller, JsonBody};
use super::App;
use crate::orchestrator::auth::Perm;
use crate::orchestrator::error::Error;
use crate::orchestrator::service::{ExportSelection, ImportOptions, Strategy, TemplateFilter};
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
        .route("/templates/{id}/export", get(export_one))
        .route("/templates/export", get(export_many))
        .route("/templates/import", post(import))
}

/// Largest YAML import body.
const MAX_IMPORT: usize = 4 << 20;

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
    let location = format!("/v1/templates/{}", template.template_id);
    Ok(super::created(StatusCode::CREATED, &location, template))
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
            "page" => filter.page = super::extract::page(&value)?,
            "pageSize" | "page_size" => filter.page_size = super::extract::page_size(&value)?,
            _ => {}
        }
    }
    Ok(Json(app.service.list_templates(filter, &caller).await?).into_response())
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
            "page" => p = super::extract::page(&value)?,
            "pageSize" | "page_size" => size = super::extract::page_size(&value)?,
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
    responses((status = 200, description = "the install command's output: so far while the version builds, its last 1 MiB (empty when the version had nothing to build)", content_type = "text/plain"),
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

/// `true`/`false` of a boolean query parameter.
fn flag(name: &str, value: &str) -> Result<bool, Error> {
    match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        other => Err(Error::invalid(format!(
            "{name} must be true or false, got {other:?}"
        ))),
    }
}

fn yaml(text: String) -> Response {
    ([(header::CONTENT_TYPE, "application/yaml; charset=utf-8")], text).into_response()
}

#[utoipa::path(get, path = "/templates/{idOrName}/export", params(("idOrName" = String, Path), ("version" = Option<u32>, Query, description = "default: the latest"),
        ("allVersions" = Option<bool>, Query, description = "add the version history")),
    responses((status = 200, description = "`kind: Template` (apiVersion sandboxd.io/v1), as import reads it", content_type = "application/yaml"),
        (status = 400, body = Fail), (status = 401, body = Fail), (status = 404, body = Fail)))]
pub(crate) async fn export_one(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, Error> {
    caller.require(Perm::Read)?;
    let (mut version, mut all) = (None, false);
    for (key, value) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "version" => version = Some(version_number(&value)?),
            "allVersions" | "all_versions" => all = flag("allVersions", &value)?,
            _ => {}
        }
    }
    let selection = ExportSelection::One {
        id_or_name: id,
        version,
    };
    Ok(yaml(app.service.export_templates(selection, all, &caller).await?))
}

#[utoipa::path(get, path = "/templates/export", params(("tag" = Option<String>, Query), ("names" = Option<String>, Query, description = "comma-separated; an unknown name is 404 naming it"),
        ("allVersions" = Option<bool>, Query)),
    responses((status = 200, description = "`kind: TemplateList` of the templates the caller may read, by name", content_type = "application/yaml"),
        (status = 400, body = Fail), (status = 401, body = Fail), (status = 404, body = Fail)))]
pub(crate) async fn export_many(
    State(app): State<App>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, Error> {
    caller.require(Perm::Read)?;
    let (mut tag, mut names, mut all) = (None, Vec::new(), false);
    for (key, value) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "tag" => tag = Some(value.into_owned()),
            "names" => names.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned),
            ),
            "allVersions" | "all_versions" => all = flag("allVersions", &value)?,
            _ => {}
        }
    }
    let selection = ExportSelection::Many { tag, names };
    Ok(yaml(app.service.export_templates(selection, all, &caller).await?))
}

#[utoipa::path(post, path = "/templates/import", params(("strategy" = Option<String>, Query, description = "create-only, update-only or create-or-update (default)"),
        ("dryRun" = Option<bool>, Query), ("atomic" = Option<bool>, Query, description = "any failed item applies nothing (400)"),
        ("autoPrepull" = Option<bool>, Query)),
    request_body(content = String, content_type = "application/yaml", description = "a Template, a TemplateList, or a --- stream of them (JSON is accepted: YAML ⊇ JSON); at most 4 MiB"),
    responses((status = 200, description = "what was created, updated, unchanged, skipped and failed (by index)", body = crate::wire::templates::ImportResult),
        (status = 400, description = "`TEMPLATE::IMPORT_INVALID`: the document cannot be read (`line:column`), a name twice, or an atomic import with a failed item; nothing applied", body = Fail),
        (status = 401, body = Fail), (status = 403, body = Fail), (status = 413, description = "over 4 MiB", body = Fail)))]
pub(crate) async fn import(
    State(app): State<App>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<Response, Error> {
    caller.require(Perm::Admin)?;
    let mut options = ImportOptions::default();
    for (key, value) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "strategy" => options.strategy = Strategy::parse(&value)?,
            "dryRun" | "dry_run" => options.dry_run = flag("dryRun", &value)?,
            "atomic" => options.atomic = flag("atomic", &value)?,
            "autoPrepull" | "auto_prepull" => options.auto_prepull = flag("autoPrepull", &value)?,
            _ => {}
        }
    }
    let bytes = super::extract::read_body(body, MAX_IMPORT).await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| Error::ImportInvalid(format!("the body is not UTF-8 text: {e}")))?;
    let document = crate::orchestrator::templates_yaml::parse(text)?;
    let result = app
        .service
        .import_templates(document.items, document.warnings, options, &caller)
        .await?;
    Ok(Json(result).into_response())
}

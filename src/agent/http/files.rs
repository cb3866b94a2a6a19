//! `/files*` and `/directories*` routes (also mounted under `/v1/filesystem/{uid}/{gid}`):
//! metadata, listing, search, and changes. Transfers (upload, download, archives) are in
//! `transfer.rs`, the watch stream in `watch.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;

use super::error::ApiError;
use super::extract::{ApiJson, FsIdentity, Params};
use super::Routes;
use super::{transfer, watch};
use crate::agent::files::identity::run;
use crate::agent::files::info::{self, Pattern};
use crate::agent::files::ops::{self, Change};
use crate::agent::files::{Files, FilesError};
use crate::agent::AppState;
use crate::wire::files::{
    FileInfo, Permission, RenameFileItem, ReplaceFileContentItem, ReplaceFileContentResult,
};
use crate::wire::ErrorBody;

/// The file and directory routes, relative to `/` or to `/v1/filesystem/{uid}/{gid}`.
pub(super) fn routes() -> Routes {
    Routes::new()
        .route("/files", axum::routing::delete(remove_files))
        .route("/files/info", get(file_info))
        .route("/files/permissions", post(set_permissions))
        .route("/files/mv", post(move_files))
        .route("/files/search", get(search_files))
        .route("/files/replace", post(replace_content))
        .route(
            "/files/upload",
            post(transfer::upload_files).layer(DefaultBodyLimit::disable()),
        )
        .route("/files/download", get(transfer::download_file))
        .route(
            "/files/archive",
            get(transfer::download_archive)
                .post(transfer::extract_archive)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/files/watch", get(watch::watch_files))
        .route("/directories", post(make_dirs).delete(remove_dirs))
        .route("/directories/list", get(list_directory))
}

/// Resolves every path, failing on the first that cannot be expanded.
fn resolve_all(files: &Files, raw: &[String]) -> Result<Vec<PathBuf>, ApiError> {
    raw.iter()
        .map(|p| files.resolve(p).map_err(ApiError::from))
        .collect()
}

/// Metadata of one or more paths (lstat: symlinks are described, not followed).
#[utoipa::path(get, path = "/files/info", tag = "files",
    params(("path" = Vec<String>, Query, description = "repeatable; `~`, `$VAR`, `${VAR}` expand")),
    responses((status = 200, description = "path as given → FileInfo", body = BTreeMap<String, FileInfo>),
        (status = 404, description = "a path does not exist", body = ErrorBody)))]
pub(crate) async fn file_info(
    State(state): State<AppState>,
    FsIdentity(id): FsIdentity,
    q: Params,
) -> Result<Json<BTreeMap<String, FileInfo>>, ApiError> {
    let given = q.all("path");
    let paths = resolve_all(&state.files, &given)?;
    let pairs = given.into_iter().zip(paths).collect();
    Ok(Json(run(id, move || info::info(pairs)).await?))
}

/// Removes files (not directories); missing paths are ignored.
#[utoipa::path(delete, path = "/files", tag = "files", params(("path" = Vec<String>, Query, description = "repeatable")),
    responses((status = 200, description = "removed"), (status = 500, description = "a path is a directory", body = ErrorBody)))]
pub(crate) async fn remove_files(
    State(state): State<AppState>,
    FsIdentity(id): FsIdentity,
    q: Params,
) -> Result<StatusCode, ApiError> {
    let paths = resolve_all(&state.files, &q.all("path"))?;
    run(id, move || ops::remove_files(&paths)).await?;
    Ok(StatusCode::OK)
}

/// Validates a `{path: Permission}` body into resolved paths and changes. Blocking: user and
/// group names are looked up in `/etc/passwd` and `/etc/group`.
fn changes(files: &Files, body: &BTreeMap<String, Permission>) -> Result<Vec<(PathBuf, Change)>, FilesError> {
    body.iter()
        .map(|(path, p)| Ok((files.resolve(path)?, Change::from_permission(p)?)))
        .collect()
}

/// chown (`owner`, `group`) then chmod (`mode`, octal digits; 0 keeps it) of existing paths.
#[utoipa::path(post, path = "/files/permissions", tag = "files", request_body = BTreeMap<String, Permission>,
    responses((status = 200, description = "applied"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn set_permissions(
    State(state): State<AppState>,
    FsIdentity(id): FsIdentity,
    ApiJson(body): ApiJson<BTreeMap<String, Permission>>,
) -> Result<StatusCode, ApiError> {
    let files = state.files.clone();
    run(id, move || ops::set_permissions(&changes(&files, &body)?)).await?;
    Ok(StatusCode::OK)
}

/// `mkdir -p` each directory, then apply its owner, group and mode.
#[utoipa::path(post, path = "/directories", tag = "files", request_body = BTreeMap<String, Permission>,
    responses((status = 200, description = "created"), (status = 400, body = ErrorBody)))]
pub(crate) async fn make_dirs(
    State(state): State<AppState>,
    FsIdentity(id): FsIdentity,
    ApiJson(body): ApiJson<BTreeMap<String, Permission>>,
) -> Result<StatusCode, ApiError> {
    let files = state.files.clone();
    run(id, move || ops::make_dirs(&changes(&files, &body)?)).await?;
    Ok(StatusCode::OK)
}

/// `rm -rf` each path; missing paths are ignored.
#[utoipa::path(delete, path = "/directories", tag = "files", params(("path" = Vec<String>, Query, description = "repeatable")),
    responses((status = 200, description = "removed"), (status = 400, description = "path is /", body = ErrorBody)))]
pub(crate) async fn remove_dirs(
    State(state): State<AppState>,
    FsIdentity(id): FsIdentity,
    q: Params,
) -> Result<StatusCode, ApiError> {
    let paths = resolve_all(&state.files, &q.all("path"))?;
    run(id, move || ops::remove_dirs(&paths)).await?;
    Ok(StatusCode::OK)
}

/// Renames each `src` to `dest` (never replacing `dest`; its parent is created).
#[utoipa::path(post, path = "/files/mv", tag = "files", request_body = Vec<RenameFileItem>,
    responses((status = 200, description = "moved"), (status = 404, description = "src missing", body = ErrorBody),
        (status = 500, description = "dest exists", body = ErrorBody)))]
pub(crate) async fn move_files(
    State(state): State<AppState>,
    FsIdentity(id): FsIdentity,
    ApiJson(body): ApiJson<Vec<RenameFileItem>>,
) -> Result<StatusCode, ApiError> {
    let items = body
        .iter()
        .map(|m| Ok((state.files.resolve(&m.src)?, state.files.resolve(&m.dest)?)))
        .collect::<Result<Vec<_>, FilesError>>()?;
    run(id, move || ops::move_all(&items)).await?;
    Ok(StatusCode::OK)
}

/// Files (not directories) below `path` whose base name matches the glob `pattern`.
#[utoipa::path(get, path = "/files/search", tag = "files",
    params(("path" = String, Query), ("pattern" = Option<String>, Query, description = "glob on base names: `*`, `?`, `[…]`, `{a,b}`, `**` (default)")),
    responses((status = 200, body = Vec<FileInfo>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn search_files(
    State(state): State<AppState>,
    FsIdentity(id): FsIdentity,
    q: Params,
) -> Result<Json<Vec<FileInfo>>, ApiError> {
    let root = state.files.resolve(q.required("path")?)?;
    let pattern = Pattern::new(q.get("pattern").unwrap_or("**"))?;
    Ok(Json(run(id, move || info::search(&root, &pattern)).await?))
}

/// Replaces every occurrence of `old` with `new` in each file.
#[utoipa::path(post, path = "/files/replace", tag = "files", request_body = BTreeMap<String, ReplaceFileContentItem>,
    params(("verbose" = Option<bool>, Query, description = "answer with per-file counts")),
    responses((status = 200, description = "replaced. With verbose=true, path → replacedCount as JSON; \
            without it, an empty body (upstream's shape)",
            content((BTreeMap<String, ReplaceFileContentResult> = "application/json"), (String = "text/plain"))),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn replace_content(
    State(state): State<AppState>,
    FsIdentity(id): FsIdentity,
    q: Params,
    ApiJson(body): ApiJson<BTreeMap<String, ReplaceFileContentItem>>,
) -> Result<Response, ApiError> {
    let keys: Vec<String> = body.keys().cloned().collect();
    let items = body
        .into_iter()
        .map(|(path, r)| Ok((state.files.resolve(&path)?, r.old, r.new)))
        .collect::<Result<Vec<_>, FilesError>>()?;
    let counts = run(id, move || ops::replace_all(&items)).await?;
    if !q.flag("verbose") {
        // Empty, as upstream answers; typed, so that the answer matches its document.
        return Ok("".into_response());
    }
    let out: BTreeMap<String, ReplaceFileContentResult> = keys
        .into_iter()
        .zip(counts)
        .map(|(k, n)| (k, ReplaceFileContentResult { replaced_count: n }))
        .collect();
    Ok(Json(out).into_response())
}

/// Entries below a directory, `depth` levels deep (default 1), lexical and depth-first.
#[utoipa::path(get, path = "/directories/list", tag = "files",
    params(("path" = String, Query), ("depth" = Option<u32>, Query, description = "levels below path; 0 lists nothing")),
    responses((status = 200, body = Vec<FileInfo>), (status = 400, description = "not a directory, a symlink, or a bad depth", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn list_directory(
    State(state): State<AppState>,
    FsIdentity(id): FsIdentity,
    q: Params,
) -> Result<Json<Vec<FileInfo>>, ApiError> {
    let root = state.files.resolve(q.required("path")?)?;
    let depth = q.parse::<u32>("depth")?.unwrap_or(1);
    Ok(Json(run(id, move || info::list(&root, depth)).await?))
}

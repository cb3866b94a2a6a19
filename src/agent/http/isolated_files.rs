//! `/v1/isolated/session/{sid}/files*`, `/directories*`, `/diff` and `/commit`: the classic
//! file routes' shapes with paths as seen inside the session, answered from the session's
//! mounts with overlay semantics (`agent::isolated::files`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::extract::{ApiJson, Params};
use super::Routes;
use crate::agent::files::archive::ChannelWriter;
use crate::agent::files::identity::start;
use crate::agent::files::info::Pattern;
use crate::agent::files::ops::{self, Change};
use crate::agent::files::upload::{self, Chunk, Target};
use crate::agent::isolated::{files, IsolatedError, Session};
use crate::agent::AppState;
use crate::wire::files::{
    FileInfo, FileMetadata, Permission, RenameFileItem, ReplaceFileContentItem, ReplaceFileContentResult,
};
use crate::wire::{ErrorBody, ErrorCode};

pub(super) fn routes() -> Routes {
    let s = "/v1/isolated/session/{sid}";
    Routes::new()
        .route(
            &format!("{s}/files"),
            axum::routing::delete(remove_isolated_files),
        )
        .route(&format!("{s}/files/info"), get(isolated_file_info))
        .route(&format!("{s}/files/download"), get(download_isolated_file))
        .route(
            &format!("{s}/files/upload"),
            post(upload_isolated_files).layer(DefaultBodyLimit::disable()),
        )
        .route(&format!("{s}/files/mv"), post(move_isolated_files))
        .route(&format!("{s}/files/permissions"), post(set_isolated_permissions))
        .route(&format!("{s}/files/replace"), post(replace_isolated_content))
        .route(&format!("{s}/files/search"), get(search_isolated_files))
        .route(
            &format!("{s}/directories"),
            post(make_isolated_dirs).delete(remove_isolated_dirs),
        )
        .route(&format!("{s}/directories/list"), get(list_isolated_directory))
        .route(&format!("{s}/diff"), get(diff_isolated_session))
        .route(&format!("{s}/commit"), post(commit_isolated_session))
}

/// Runs `f` with the session on a blocking thread.
async fn with_session<T: Send + 'static>(
    state: &AppState,
    sid: &str,
    f: impl FnOnce(&Session) -> Result<T, IsolatedError> + Send + 'static,
) -> Result<T, ApiError> {
    let session: Arc<Session> = state.isolation.ready().await?.get(sid)?;
    tokio::task::spawn_blocking(move || f(&session))
        .await
        .map_err(|e| ApiError::runtime(format!("file worker failed: {e}")))?
        .map_err(ApiError::from)
}

fn paths(q: &Params) -> Result<Vec<String>, ApiError> {
    let all = q.all("path");
    if all.is_empty() {
        return Err(ApiError::missing_query("path"));
    }
    Ok(all)
}

/// Metadata of paths in the session's merged view.
#[utoipa::path(get, path = "/v1/isolated/session/{sid}/files/info", tag = "isolated",
    params(("sid" = String, Path), ("path" = Vec<String>, Query)),
    responses((status = 200, body = BTreeMap<String, FileInfo>), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn isolated_file_info(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    q: Params,
) -> Result<Json<BTreeMap<String, FileInfo>>, ApiError> {
    let given = paths(&q)?;
    Ok(Json(
        with_session(&state, &sid, move |s| files::info(s, &given)).await?,
    ))
}

/// Downloads a file of the merged view (whole, or one `Range: bytes=a-b`).
#[utoipa::path(get, path = "/v1/isolated/session/{sid}/files/download", tag = "isolated",
    params(("sid" = String, Path), ("path" = String, Query)),
    responses((status = 200, description = "content"), (status = 206, description = "range"), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn download_isolated_file(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, ApiError> {
    let raw = q.required("path")?.to_owned();
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (file, start, end, size) = with_session(&state, &sid, move |s| {
        let host = files::read_path(s, &raw)?;
        let file =
            std::fs::File::open(&host).map_err(|e| crate::agent::files::FilesError::io("open", &host)(e))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let (start, end) = match range.as_deref() {
            Some(r) => crate::agent::files::download::parse_range(r, size)
                .map_err(|_| IsolatedError::Invalid(format!("unsatisfiable range {r}")))?,
            None => (0, size.saturating_sub(1)),
        };
        Ok((file, start, end, size))
    })
    .await?;
    let partial = headers.contains_key(header::RANGE);
    let len = if size == 0 { 0 } else { end + 1 - start };
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    let _ = start_reader(file, start, len, tx);
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut resp = body.into_response();
    *resp.status_mut() = if partial {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if partial {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{size}")) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    Ok(resp)
}

fn start_reader(
    file: std::fs::File,
    start: u64,
    len: u64,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("iso-download".into())
        .spawn(move || {
            use std::os::unix::fs::FileExt;
            let mut pos = start;
            let end = start + len;
            while pos < end {
                let mut buf = vec![0u8; (end - pos).min(256 << 10) as usize];
                match file.read_at(&mut buf, pos) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        pos += n as u64;
                        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
        })
        .map(drop)
}

/// Uploads files into the session (into the upper of an overlay; 403 on `ro`).
#[utoipa::path(post, path = "/v1/isolated/session/{sid}/files/upload", tag = "isolated",
    params(("sid" = String, Path)),
    request_body(content_type = "multipart/form-data", description = "repeated `metadata` and `file` parts"),
    responses((status = 200, description = "written"), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn upload_isolated_files(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    req: Request,
) -> Result<StatusCode, ApiError> {
    let session = state.isolation.ready().await?.get(&sid)?;
    let mut multipart = Multipart::from_request(req, &state).await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidFile,
            format!("expected multipart/form-data: {e}"),
        )
    })?;
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidFile,
            format!("malformed multipart body: {e}"),
        )
    };
    let mut pending: Option<(Target, bool)> = None;
    let mut written = 0;
    while let Some(mut field) = multipart.next_field().await.map_err(bad)? {
        match field.name() {
            Some("metadata") => {
                let raw = field.bytes().await.map_err(bad)?;
                let meta: FileMetadata = serde_json::from_slice(&raw).map_err(|e| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::InvalidFileMetadata,
                        format!("metadata is not FileMetadata JSON: {e}"),
                    )
                })?;
                let s = Arc::clone(&session);
                let target = tokio::task::spawn_blocking(move || -> Result<(Target, bool), IsolatedError> {
                    let change = Change::new(meta.owner.as_deref(), meta.group.as_deref(), meta.mode)?;
                    let path = files::write_path(&s, &meta.path, false)?;
                    Ok((
                        Target { path, change },
                        meta.owner.is_none() && meta.group.is_none(),
                    ))
                })
                .await
                .map_err(|e| ApiError::runtime(e.to_string()))??;
                pending = Some(target);
            }
            Some("file") => {
                let Some((target, chown)) = pending.take() else {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::InvalidFileMetadata,
                        "file part before its metadata part",
                    ));
                };
                let (tx, mut rx) = mpsc::channel::<Chunk>(4);
                let host = target.path.clone();
                let writer = start(None, move || upload::write(&target, &mut rx));
                while let Some(chunk) = field.chunk().await.map_err(bad)? {
                    if tx.send(Chunk::Data(vec![chunk])).await.is_err() {
                        break;
                    }
                }
                let _ = tx.send(Chunk::End).await;
                writer.wait().await?;
                if chown {
                    files::chown_to_session(&session, &host);
                }
                written += 1;
            }
            _ => while field.chunk().await.map_err(bad)?.is_some() {},
        }
    }
    if written == 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidFile,
            "no file parts in the upload",
        ));
    }
    Ok(StatusCode::OK)
}

/// Removes every `path` of the query (directories recursively when `recursive`).
async fn remove_paths(
    state: &AppState,
    sid: &str,
    q: &Params,
    recursive: bool,
) -> Result<StatusCode, ApiError> {
    let given = paths(q)?;
    with_session(state, sid, move |s| {
        given.iter().try_for_each(|p| files::remove(s, p, recursive))
    })
    .await?;
    Ok(StatusCode::OK)
}

/// Deletes files (whiteouts over lower entries).
#[utoipa::path(delete, path = "/v1/isolated/session/{sid}/files", tag = "isolated",
    params(("sid" = String, Path), ("path" = Vec<String>, Query)),
    responses((status = 200, description = "removed"), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn remove_isolated_files(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    q: Params,
) -> Result<StatusCode, ApiError> {
    remove_paths(&state, &sid, &q, false).await
}

/// Deletes directories recursively (whiteouts over lower entries).
#[utoipa::path(delete, path = "/v1/isolated/session/{sid}/directories", tag = "isolated",
    params(("sid" = String, Path), ("path" = Vec<String>, Query)),
    responses((status = 200, description = "removed"), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn remove_isolated_dirs(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    q: Params,
) -> Result<StatusCode, ApiError> {
    remove_paths(&state, &sid, &q, true).await
}

/// Moves entries: copy up to the destination, whiteout at the source.
#[utoipa::path(post, path = "/v1/isolated/session/{sid}/files/mv", tag = "isolated",
    params(("sid" = String, Path)), request_body = Vec<RenameFileItem>,
    responses((status = 200, description = "moved"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn move_isolated_files(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    ApiJson(items): ApiJson<Vec<RenameFileItem>>,
) -> Result<StatusCode, ApiError> {
    with_session(&state, &sid, move |s| {
        for item in &items {
            let src = files::read_path(s, &item.src)?;
            // Refuse before writing anything if the source cannot be removed.
            files::write_path(s, &item.src, false)?;
            let dest = files::write_path(s, &item.dest, false)?;
            if files::read_path(s, &item.dest).is_ok() {
                return Err(IsolatedError::Files(crate::agent::files::FilesError::Exists(
                    item.dest.clone().into(),
                )));
            }
            copy_tree(&src, &dest)?;
            files::remove(s, &item.src, true)?;
        }
        Ok(())
    })
    .await?;
    Ok(StatusCode::OK)
}

fn copy_tree(src: &std::path::Path, dest: &std::path::Path) -> Result<(), IsolatedError> {
    let io = |p: &std::path::Path| {
        let p = p.to_path_buf();
        move |e| IsolatedError::Files(crate::agent::files::FilesError::io("copy", &p)(e))
    };
    let meta = std::fs::symlink_metadata(src).map_err(io(src))?;
    if meta.is_dir() {
        std::fs::create_dir(dest).map_err(io(dest))?;
        let _ = std::fs::set_permissions(dest, meta.permissions());
        for e in std::fs::read_dir(src).map_err(io(src))?.flatten() {
            copy_tree(&e.path(), &dest.join(e.file_name()))?;
        }
    } else if meta.file_type().is_symlink() {
        let target = std::fs::read_link(src).map_err(io(src))?;
        std::os::unix::fs::symlink(target, dest).map_err(io(dest))?;
    } else {
        std::fs::copy(src, dest).map_err(io(dest))?;
    }
    use std::os::unix::fs::MetadataExt;
    let _ = std::os::unix::fs::lchown(dest, Some(meta.uid()), Some(meta.gid()));
    Ok(())
}

/// chown/chmod (lower-only entries are copied up first).
#[utoipa::path(post, path = "/v1/isolated/session/{sid}/files/permissions", tag = "isolated",
    params(("sid" = String, Path)), request_body = BTreeMap<String, Permission>,
    responses((status = 200, description = "applied"), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn set_isolated_permissions(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    ApiJson(body): ApiJson<BTreeMap<String, Permission>>,
) -> Result<StatusCode, ApiError> {
    with_session(&state, &sid, move |s| {
        for (raw, p) in &body {
            let change = Change::from_permission(p)?;
            files::read_path(s, raw)?;
            let host = files::write_path(s, raw, true)?;
            change.apply(&host)?;
        }
        Ok(())
    })
    .await?;
    Ok(StatusCode::OK)
}

/// Replaces text in files (copied up first); always answers the per-file counts.
#[utoipa::path(post, path = "/v1/isolated/session/{sid}/files/replace", tag = "isolated",
    params(("sid" = String, Path)), request_body = BTreeMap<String, ReplaceFileContentItem>,
    responses((status = 200, body = BTreeMap<String, ReplaceFileContentResult>), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn replace_isolated_content(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    ApiJson(body): ApiJson<BTreeMap<String, ReplaceFileContentItem>>,
) -> Result<Json<BTreeMap<String, ReplaceFileContentResult>>, ApiError> {
    let out = with_session(&state, &sid, move |s| {
        let mut items = Vec::new();
        for (raw, r) in &body {
            files::read_path(s, raw)?;
            items.push((files::write_path(s, raw, true)?, r.old.clone(), r.new.clone()));
        }
        let counts = ops::replace_all(&items)?;
        Ok(body
            .keys()
            .cloned()
            .zip(counts)
            .map(|(k, n)| (k, ReplaceFileContentResult { replaced_count: n }))
            .collect())
    })
    .await?;
    Ok(Json(out))
}

/// Files below `path` whose base name matches `pattern`, in the merged view.
#[utoipa::path(get, path = "/v1/isolated/session/{sid}/files/search", tag = "isolated",
    params(("sid" = String, Path), ("path" = String, Query), ("pattern" = Option<String>, Query)),
    responses((status = 200, body = Vec<FileInfo>), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn search_isolated_files(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    q: Params,
) -> Result<Json<Vec<FileInfo>>, ApiError> {
    let root = q.required("path")?.to_owned();
    let pattern = Pattern::new(q.get("pattern").unwrap_or("**"))?;
    Ok(Json(
        with_session(&state, &sid, move |s| {
            files::walk(s, &root, u32::MAX, Some(&pattern))
        })
        .await?,
    ))
}

/// `mkdir -p` in the session (in the upper of an overlay).
#[utoipa::path(post, path = "/v1/isolated/session/{sid}/directories", tag = "isolated",
    params(("sid" = String, Path)), request_body = BTreeMap<String, Permission>,
    responses((status = 200, description = "created"), (status = 403, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn make_isolated_dirs(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    ApiJson(body): ApiJson<BTreeMap<String, Permission>>,
) -> Result<StatusCode, ApiError> {
    with_session(&state, &sid, move |s| {
        for (raw, p) in &body {
            let change = Change::from_permission(p)?;
            let host = files::write_path(s, raw, false)?;
            if files::read_path(s, raw).is_err() || !host.exists() {
                std::fs::create_dir_all(&host)
                    .map_err(|e| crate::agent::files::FilesError::io("mkdir", &host)(e))?;
                files::chown_to_session(s, &host);
            }
            change.apply(&host)?;
        }
        Ok(())
    })
    .await?;
    Ok(StatusCode::OK)
}

/// Entries below a directory of the merged view, `depth` levels deep (default 1).
#[utoipa::path(get, path = "/v1/isolated/session/{sid}/directories/list", tag = "isolated",
    params(("sid" = String, Path), ("path" = String, Query), ("depth" = Option<u32>, Query)),
    responses((status = 200, body = Vec<FileInfo>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn list_isolated_directory(
    State(state): State<AppState>,
    Path(sid): Path<String>,
    q: Params,
) -> Result<Json<Vec<FileInfo>>, ApiError> {
    let root = q.required("path")?.to_owned();
    let depth = q.parse::<u32>("depth")?.unwrap_or(1);
    Ok(Json(
        with_session(&state, &sid, move |s| files::walk(s, &root, depth, None)).await?,
    ))
}

/// The session's changes: its overlay uppers as tar.gz (whiteouts as char devices 0/0).
#[utoipa::path(get, path = "/v1/isolated/session/{sid}/diff", tag = "isolated", params(("sid" = String, Path)),
    responses((status = 200, description = "tar.gz", content_type = "application/gzip"), (status = 404, description = "no persistent overlay", body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn diff_isolated_session(
    State(state): State<AppState>,
    Path(sid): Path<String>,
) -> Result<Response, ApiError> {
    let session = state.isolation.ready().await?.get(&sid)?;
    if session.mounts().iter().all(|m| m.upper.is_none()) {
        return Err(IsolatedError::NothingPersisted.into());
    }
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(4);
    let err_tx = tx.clone();
    std::thread::Builder::new()
        .name("iso-diff".into())
        .spawn(move || {
            if let Err(e) = files::diff(&session, ChannelWriter::new(tx)) {
                let _ = err_tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        })
        .map_err(|e| ApiError::runtime(e.to_string()))?;
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut resp = body.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/gzip"));
    Ok(resp)
}

/// Applies the session's overlay uppers to the lower directories (atomically per file).
#[utoipa::path(post, path = "/v1/isolated/session/{sid}/commit", tag = "isolated", params(("sid" = String, Path)),
    responses((status = 200, description = "`{\"applied\": n}`"), (status = 404, description = "no persistent overlay", body = ErrorBody), (status = 503, body = ErrorBody)))]
pub(crate) async fn commit_isolated_session(
    State(state): State<AppState>,
    Path(sid): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let applied = with_session(&state, &sid, files::commit).await?;
    Ok(Json(serde_json::json!({ "applied": applied })))
}

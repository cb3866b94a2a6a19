//! Streaming transfers: multipart upload, download with `Range` and validators, and tar
//! archives in both directions. Bodies move in bounded chunks between the connection and a
//! blocking thread; no file is ever held in memory whole.

use std::collections::VecDeque;
use std::io;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::error::ApiError;
use super::extract::{FsIdentity, Params};
use crate::agent::files::archive::{self, ChannelReader, ChannelWriter};
use crate::agent::files::buffers::Pool;
use crate::agent::files::download::{self, RangeError};
use crate::agent::files::identity::{run, start};
use crate::agent::files::upload::{self, Chunk, Target};
use crate::agent::files::FilesError;
use crate::agent::AppState;
use crate::wire::files::{ArchiveExtractResult, FileMetadata};
use crate::wire::{ErrorBody, ErrorCode};

/// Upload content is handed to the writer in batches of this many bytes.
const WRITE_BATCH: usize = 1 << 20;
/// Batches in flight between the connection and the writer.
const IN_FLIGHT: usize = 4;
/// Largest `metadata` part accepted.
const METADATA_MAX: usize = 64 << 10;

/// A streaming body fed by a blocking producer.
fn channel_body(capacity: usize) -> (mpsc::Sender<io::Result<Bytes>>, Body) {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(capacity);
    (
        tx,
        Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)),
    )
}

/// What produces a streamed body: called with a sender that returns false once the client has
/// gone. Boxed so that one copy of the plumbing serves every kind of download.
type Producer = Box<dyn FnOnce(&mut dyn FnMut(Bytes) -> bool) -> io::Result<()> + Send>;

/// A body fed by `produce` on a blocking thread; a failure mid-way ends it with an error, so
/// the client sees a broken transfer rather than a short file.
fn body_from(produce: Producer) -> Body {
    let (tx, body) = channel_body(4);
    let _ = start(None, move || {
        let send_tx = tx.clone();
        let mut send = |b: Bytes| send_tx.blocking_send(Ok(b)).is_ok();
        if let Err(e) = produce(&mut send) {
            let _ = tx.blocking_send(Err(e));
        }
        Ok(())
    });
    body
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Uploads files: pairs of a `metadata` part (JSON `FileMetadata`, with or without a filename)
/// and the `file` part after it. Each file is streamed to a temp file beside its target and
/// renamed into place once complete; a failure leaves no partial or temp file and names the part.
#[utoipa::path(post, path = "/files/upload", tag = "files",
    request_body(content_type = "multipart/form-data", description = "repeated `metadata` (FileMetadata JSON) and `file` parts, paired in order"),
    responses((status = 200, description = "every file written"),
        (status = 400, description = "INVALID_FILE, INVALID_FILE_METADATA or INVALID_FILE_CONTENT", body = ErrorBody),
        (status = 403, description = "permission denied", body = ErrorBody),
        (status = 507, description = "no space left; nothing of the failed file remains", body = ErrorBody)))]
pub(crate) async fn upload_files(
    State(state): State<AppState>,
    FsIdentity(id): FsIdentity,
    req: Request,
) -> Result<StatusCode, ApiError> {
    let mut multipart = Multipart::from_request(req, &state).await.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidFile,
            format!("expected multipart/form-data: {e}"),
        )
    })?;
    let bad_form = |e: axum::extract::multipart::MultipartError| {
        if crate::serve::is_body_idle_timeout(&e) {
            return body_idle(&e);
        }
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidFile,
            format!("malformed multipart body: {e}"),
        )
    };
    let mut waiting: VecDeque<(usize, Target)> = VecDeque::new();
    let (mut metas, mut files) = (0usize, 0usize);
    while let Some(mut field) = multipart.next_field().await.map_err(bad_form)? {
        match field.name() {
            Some("metadata") => {
                metas += 1;
                let meta = read_metadata(&mut field, metas)
                    .await
                    .map_err(|e| e.into_api(bad_form))?;
                // Blocking: owner and group names are looked up in /etc/passwd and /etc/group.
                let files = state.files.clone();
                let target = run(None, move || Target::new(&files, &meta)).await.map_err(|e| {
                    ApiError::from(e)
                        .with_code(ErrorCode::InvalidFileMetadata)
                        .context(format!("metadata part {metas}"))
                })?;
                waiting.push_back((metas, target));
            }
            Some("file") => {
                files += 1;
                let Some((n, target)) = waiting.pop_front() else {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::InvalidFileMetadata,
                        format!("file part {files} comes before its metadata part"),
                    ));
                };
                let label = format!("file part {n} ({})", target.path.display());
                write_part(id, target, &mut field)
                    .await
                    .map_err(|e| e.context(label))?;
            }
            _ => {
                // Unknown parts are skipped, as form parsers do.
                while field.chunk().await.map_err(bad_form)?.is_some() {}
            }
        }
    }
    if let Some((n, target)) = waiting.front() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidFile,
            format!("metadata part {n} ({}) has no file part", target.path.display()),
        ));
    }
    if files == 0 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidFile,
            "no file parts in the upload",
        ));
    }
    Ok(StatusCode::OK)
}

/// Why a `metadata` part was refused: its body broke off, or it is not what it must be.
pub(crate) enum MetadataError {
    /// The multipart body itself failed.
    Form(axum::extract::multipart::MultipartError),
    /// The part was read but is refused (400 `INVALID_FILE_METADATA`).
    Invalid(ApiError),
}

impl MetadataError {
    fn into_api(self, form: impl FnOnce(axum::extract::multipart::MultipartError) -> ApiError) -> ApiError {
        match self {
            MetadataError::Form(e) => form(e),
            MetadataError::Invalid(e) => e,
        }
    }
}

/// Reads the `n`th `metadata` part: at most 64 KiB of `FileMetadata` JSON with a path.
pub(crate) async fn read_metadata(
    field: &mut axum::extract::multipart::Field<'_>,
    n: usize,
) -> Result<FileMetadata, MetadataError> {
    let mut raw = Vec::new();
    while let Some(chunk) = field.chunk().await.map_err(MetadataError::Form)? {
        raw.extend_from_slice(&chunk);
        if raw.len() > METADATA_MAX {
            return Err(MetadataError::Invalid(metadata_error(
                n,
                "metadata part is larger than 64 KiB",
            )));
        }
    }
    let meta: FileMetadata = serde_json::from_slice(&raw).map_err(|e| {
        MetadataError::Invalid(metadata_error(
            n,
            format!("metadata is not FileMetadata JSON: {e}"),
        ))
    })?;
    if meta.path.is_empty() {
        return Err(MetadataError::Invalid(metadata_error(n, "metadata has no path")));
    }
    Ok(meta)
}

fn metadata_error(n: usize, message: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        ErrorCode::InvalidFileMetadata,
        format!("metadata part {n}: {message}"),
    )
}

/// Streams one `file` part to its writer thread and waits for the commit.
async fn write_part(
    id: Option<crate::agent::files::identity::Identity>,
    target: Target,
    field: &mut axum::extract::multipart::Field<'_>,
) -> Result<u64, ApiError> {
    let (tx, mut rx) = mpsc::channel::<Chunk>(IN_FLIGHT);
    // The writer owns the receiver: if this request is dropped, the channel closes without
    // `End` and the writer removes what it wrote.
    let writer = start(id, move || upload::write(&target, &mut rx));
    // Content is copied into pooled batch buffers, so the multipart parser's own buffer is free
    // to be reused at once and no batch costs fresh pages; the writer's drop of a batch returns
    // its buffer to the pool.
    let pool = Pool::new(WRITE_BATCH, IN_FLIGHT + 2);
    let mut batch = pool.take();
    let mut filled = 0usize;
    let mut broken = None;
    loop {
        match field.chunk().await {
            Ok(Some(mut bytes)) => {
                let mut writer_gone = false;
                while !bytes.is_empty() {
                    let n = bytes.len().min(WRITE_BATCH - filled);
                    batch[filled..filled + n].copy_from_slice(&bytes.split_to(n));
                    filled += n;
                    if filled == WRITE_BATCH {
                        let full = pool.lend(std::mem::replace(&mut batch, pool.take()), filled);
                        filled = 0;
                        if tx.send(Chunk::Data(vec![full])).await.is_err() {
                            writer_gone = true; // the writer failed; its error is below
                            break;
                        }
                    }
                }
                if writer_gone {
                    break;
                }
            }
            Ok(None) => {
                if filled > 0 {
                    let _ = tx.send(Chunk::Data(vec![pool.lend(batch, filled)])).await;
                }
                let _ = tx.send(Chunk::End).await;
                break;
            }
            Err(e) => {
                broken = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let result = writer.wait().await;
    if let Some(e) = broken {
        if crate::serve::is_body_idle_timeout(&e) {
            return Err(body_idle(&e));
        }
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidFileContent,
            format!("body broke off: {e}"),
        ));
    }
    result.map_err(|e| match e {
        FilesError::Body(_) => ApiError::from(e).with_code(ErrorCode::InvalidFileContent),
        other => ApiError::from(other),
    })
}

/// 408: the client stopped sending the upload (nothing of the file remains).
fn body_idle(e: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        ErrorCode::RequestTimeout,
        format!("upload stalled: {e}"),
    )
}

/// Downloads a file: the whole file, one byte range (`Range: bytes=a-b | a- | -n` → 206), or
/// lines (`offset`, 1-based, and `limit` → text/plain). `If-None-Match` answers 304 and
/// `If-Range` guards a range with the ETag or `Last-Modified`.
#[utoipa::path(get, path = "/files/download", tag = "files",
    params(("path" = String, Query), ("offset" = Option<u64>, Query, description = "first line (1-based), line mode"),
        ("limit" = Option<u64>, Query, description = "number of lines, line mode"),
        ("Range" = Option<String>, Header), ("If-None-Match" = Option<String>, Header), ("If-Range" = Option<String>, Header)),
    responses((status = 200, description = "the file", content_type = "application/octet-stream"),
        (status = 206, description = "the requested range, with Content-Range"),
        (status = 304, description = "If-None-Match matched"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 416, description = "malformed or unsatisfiable Range (code UNKNOWN)", body = ErrorBody)))]
pub(crate) async fn download_file(
    State(state): State<AppState>,
    FsIdentity(id): FsIdentity,
    q: Params,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let path = state.files.resolve(q.required("path")?)?;
    let offset = q.parse::<u64>("offset")?;
    let limit = q.parse::<u64>("limit")?;
    let file = run(id, move || download::open(&path)).await?;
    if offset.is_some() || limit.is_some() {
        if headers.contains_key(header::RANGE) {
            return Err(ApiError::bad_request("offset/limit and Range cannot be combined"));
        }
        if offset == Some(0) || limit == Some(0) {
            return Err(ApiError::bad_request("offset and limit start at 1"));
        }
        let (first, count) = (offset.unwrap_or(1), limit);
        let body = body_from(Box::new(move |send| {
            download::pump_lines(file.file, first, count, send)
        }));
        let mut resp = Response::new(body);
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return Ok(resp);
    }

    let last_modified = download::http_date(file.modified);
    let mut common = HeaderMap::new();
    common.insert(header::ETAG, header_value(&file.etag));
    common.insert(header::LAST_MODIFIED, header_value(&last_modified));
    common.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    common.insert(
        header::CONTENT_DISPOSITION,
        header_value(&download::content_disposition(&file.name)),
    );
    let text = |name: &header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());

    if text(&header::IF_NONE_MATCH).is_some_and(|h| download::none_match(h, &file.etag)) {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }
    let range_applies =
        text(&header::IF_RANGE).is_none_or(|h| download::if_range_holds(h, &file.etag, &last_modified));
    let range = match text(&header::RANGE).filter(|_| range_applies) {
        None if headers.contains_key(header::RANGE) && range_applies => Err(RangeError::Malformed),
        None => Ok(None),
        Some(h) => download::parse_range(h, file.size).map(Some),
    };
    let (status, start, len) = match range {
        Ok(None) => (StatusCode::OK, 0, file.size),
        Ok(Some((a, b))) => {
            common.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {a}-{b}/{}", file.size)),
            );
            (StatusCode::PARTIAL_CONTENT, a, b - a + 1)
        }
        Err(e) => {
            common.insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes */{}", file.size)),
            );
            let message = match e {
                RangeError::Malformed => "malformed Range header",
                RangeError::Unsatisfiable => "range not satisfiable",
            };
            let err = ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::Unknown, message);
            return Ok((common, err).into_response());
        }
    };
    common.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    common.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    let body = body_from(Box::new(move |send| download::pump(&file.file, start, len, send)));
    Ok((status, common, body).into_response())
}

/// Streams a tar of a directory (`gzip=true` compresses it); names are relative to `path`.
#[utoipa::path(get, path = "/files/archive", tag = "files",
    params(("path" = String, Query, description = "directory"), ("gzip" = Option<bool>, Query)),
    responses((status = 200, description = "tar stream; gzip-compressed with gzip=true",
            content(("application/x-tar"), ("application/gzip"))),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn download_archive(
    State(state): State<AppState>,
    FsIdentity(id): FsIdentity,
    q: Params,
) -> Result<Response, ApiError> {
    let dir = state.files.resolve(q.required("path")?)?;
    let gzip = q.flag("gzip");
    let check = dir.clone();
    run(id, move || {
        let meta = std::fs::metadata(&check).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => FilesError::NotFound(check.clone()),
            _ => FilesError::io("stat", &check)(e),
        })?;
        if !meta.is_dir() {
            return Err(FilesError::NotDirectory(check.clone()));
        }
        archive::check_readable(&check)
    })
    .await?;
    let name = dir
        .file_name()
        .map_or_else(|| "root".to_owned(), |n| n.to_string_lossy().into_owned());
    let (tx, body) = channel_body(4);
    let producer_dir = dir.clone();
    // The producer ends on its own: when the tar is complete or when the client goes away
    // (the channel closes and the next write fails).
    let err_tx = tx.clone();
    let _ = start(id, move || {
        if let Err(e) = archive::create(&producer_dir, ChannelWriter::new(tx), gzip) {
            tracing::warn!(dir = %producer_dir.display(), error = %e, "archive stream failed");
            let _ = err_tx.blocking_send(Err(io::Error::other(e.to_string())));
        }
        Ok(())
    });
    let (content_type, ext) = if gzip {
        ("application/gzip", "tar.gz")
    } else {
        ("application/x-tar", "tar")
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_DISPOSITION,
        header_value(&download::content_disposition(&format!("{name}.{ext}"))),
    );
    Ok((headers, body).into_response())
}

/// Unpacks a tar (gzip detected) under `path`, each file atomically; entries that would land
/// outside `path` (absolute, `..`, through a symlink) stop the extraction with a 400.
#[utoipa::path(post, path = "/files/archive", tag = "files",
    params(("path" = String, Query, description = "directory to extract into; created if missing")),
    request_body(content_type = "application/x-tar", description = "tar, optionally gzip-compressed"),
    responses((status = 200, body = ArchiveExtractResult), (status = 400, description = "bad archive or escaping entry", body = ErrorBody),
        (status = 507, body = ErrorBody)))]
pub(crate) async fn extract_archive(
    State(state): State<AppState>,
    FsIdentity(id): FsIdentity,
    q: Params,
    body: Body,
) -> Result<Json<ArchiveExtractResult>, ApiError> {
    let dir = state.files.resolve(q.required("path")?)?;
    let (tx, rx) = mpsc::channel::<Chunk>(16);
    let extractor = start(id, move || archive::extract(&dir, ChannelReader::new(rx)));
    let mut stream = body.into_data_stream();
    let mut broken = None;
    loop {
        match stream.next().await {
            Some(Ok(bytes)) => {
                if tx.send(Chunk::Data(vec![bytes])).await.is_err() {
                    break; // the extractor stopped; its error is below
                }
            }
            Some(Err(e)) => {
                broken = Some(e);
                break;
            }
            None => {
                let _ = tx.send(Chunk::End).await;
                break;
            }
        }
    }
    drop(tx);
    let result = extractor.wait().await;
    if let Some(e) = broken {
        return Err(ApiError::bad_request(format!("request body broke off: {e}")));
    }
    Ok(Json(result?))
}

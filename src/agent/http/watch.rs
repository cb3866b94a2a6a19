//! `GET /files/watch` (beyond the contract): a standard SSE stream of file changes, resumable
//! with `Last-Event-ID`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;

use super::error::ApiError;
use super::extract::{FsIdentity, LastEventId, Params};
use super::sse_headers;
use crate::agent::files::identity::run;
use crate::agent::files::FilesError;
use crate::agent::AppState;
use crate::wire::ErrorBody;

/// Quiet time after which a keep-alive comment is sent.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Streams `created`, `modified`, `deleted`, `renamed` and `overflow` events under `path`.
#[utoipa::path(get, path = "/files/watch", tag = "files",
    params(("path" = String, Query), ("recursive" = Option<bool>, Query, description = "watch subdirectories too (default true)"),
        ("Last-Event-ID" = Option<u64>, Header, description = "resume after this event id")),
    responses((status = 200, description = "SSE stream of WatchEvent", content_type = "text/event-stream", body = crate::wire::files::WatchEvent),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn watch_files(
    State(state): State<AppState>,
    FsIdentity(id): FsIdentity,
    q: Params,
    last_event_id: Result<LastEventId, ApiError>,
) -> Result<Response, ApiError> {
    let path = state.files.resolve(q.required("path")?)?;
    let recursive = q
        .get("recursive")
        .is_none_or(|v| matches!(v, "true" | "1" | "yes"));
    // Checked after the path, so a missing path is reported first.
    let LastEventId(after) = last_event_id?;
    // The identity must be able to read what it watches; the watch itself is shared.
    let check = path.clone();
    run(id, move || {
        std::fs::symlink_metadata(&check)
            .and_then(|m| {
                if m.is_dir() {
                    std::fs::read_dir(&check).map(drop)
                } else {
                    std::fs::File::open(&check).map(drop)
                }
            })
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => FilesError::NotFound(check.clone()),
                _ => FilesError::io("watch", &check)(e),
            })
    })
    .await?;
    let watches = state.watches.clone();
    let subscription = run(None, move || Ok(watches.subscribe(path, recursive, after))).await??;
    // An initial comment flushes the headers, so clients know the watch is live.
    let opening =
        futures_util::stream::once(async { Ok::<_, std::io::Error>(Bytes::from_static(b": watching\n\n")) });
    let events = futures_util::stream::unfold(subscription, |mut sub| async move {
        let chunk = sub
            .next(KEEP_ALIVE)
            .await
            .unwrap_or_else(|| Bytes::from_static(b": keep-alive\n\n"));
        Some((Ok::<_, std::io::Error>(chunk), sub))
    });
    let mut resp = Response::new(Body::from_stream(futures_util::StreamExt::chain(opening, events)));
    sse_headers(resp.headers_mut());
    Ok(resp)
}

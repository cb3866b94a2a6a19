//! The containers view: `GET /containers`, `/containers/{id}` (also `/status`, seed 004's
//! path) and `/containers/{id}/logs` (plain text, chunked; SSE when following with
//! `Accept: text/event-stream`).

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt as _;

use super::diagnostics::{bad_since, parse_since, MAX_TAIL};
use super::extract::Caller;
use super::App;
use crate::orchestrator::auth::Perm;
use crate::orchestrator::error::Error;
use crate::orchestrator::runtime::LogQuery;
use crate::orchestrator::service::ContainerFilter;

/// The routes of this resource (behind auth).
pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/containers", get(list_containers))
        .route("/containers/{id}", get(get_container))
        .route("/containers/{id}/status", get(container_status))
        .route("/containers/{id}/logs", get(container_logs))
}

#[utoipa::path(get, path = "/containers", params(
        ("state" = Option<String>, Query, description = "`Created`, `Running`, `Paused`, `Removing`, `Exited` or `Unknown` (case-insensitive)"),
        ("sandboxId" = Option<String>, Query, description = "one sandbox's container"),
        ("poolRef" = Option<String>, Query, description = "one warm pool's members, idle and allocated"),
        ("page" = Option<u32>, Query, minimum = 1), ("pageSize" = Option<u32>, Query, minimum = 1, maximum = 200)),
    responses((status = 200, description = "the containers sandboxd manages that the caller may see (an admin: all, whatever their role; \
            anyone else: their sandboxes', pool-backed ones included), newest first. No usage sample in lists", body = crate::wire::events::ListContainersResponse),
        (status = 400, description = "a bad `page` or `pageSize`", body = crate::wire::lifecycle::LifecycleError),
        (status = 401, body = crate::wire::lifecycle::LifecycleError),
        (status = 503, description = "`SANDBOX::RUNTIME_UNAVAILABLE`", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn list_containers(
    State(app): State<App>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, Error> {
    caller.require(Perm::Read)?;
    let mut filter = ContainerFilter {
        page: 1,
        page_size: 20,
        ..Default::default()
    };
    for (key, value) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match key.as_ref() {
            "state" => filter.state = Some(value.into_owned()),
            "sandboxId" | "sandbox_id" => filter.sandbox_id = Some(value.into_owned()),
            "poolRef" | "pool_ref" => filter.pool_ref = Some(value.into_owned()),
            "page" => filter.page = super::extract::page(&value)?,
            "pageSize" | "page_size" => filter.page_size = super::extract::page_size(&value)?,
            _ => {}
        }
    }
    Ok(Json(app.service.list_containers(filter, &caller).await?).into_response())
}

#[utoipa::path(get, path = "/containers/{id}", params(("id" = String, Path, description = "a container id (at least 12 hex digits), a container name or a sandbox id")),
    responses((status = 200, description = "the container, with a one-shot usage sample when it runs", body = crate::wire::events::ContainerInfo),
        (status = 400, description = "an id that cannot name a container (a hex prefix shorter than 12 digits)", body = crate::wire::lifecycle::LifecycleError),
        (status = 404, description = "`CONTAINER::NOT_FOUND`: none that sandboxd manages (or not the caller's)", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn get_container(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    caller.require(Perm::Read)?;
    Ok(Json(app.service.container(&id, &caller).await?).into_response())
}

#[utoipa::path(get, path = "/containers/{id}/status", params(("id" = String, Path, description = "a container id (at least 12 hex digits), a container name or a sandbox id")),
    responses((status = 200, description = "the same as `GET /containers/{id}` (seed 004's path)", body = crate::wire::events::ContainerInfo),
        (status = 400, description = "an id that cannot name a container", body = crate::wire::lifecycle::LifecycleError),
        (status = 404, description = "`CONTAINER::NOT_FOUND`", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn container_status(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    get_container(State(app), Caller(caller), Path(id)).await
}

/// `?tail=&since=&timestamps=&follow=`.
fn log_query(query: &str, now_ms: i64) -> Result<LogQuery, Error> {
    let mut q = LogQuery::default();
    let flag = |name: &str, value: &str| match value {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(Error::invalid(format!(
            "{name} must be true or false, got {value:?}"
        ))),
    };
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "tail" if value == "all" => q.tail = None,
            "tail" => {
                q.tail = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_TAIL).contains(n))
                        .ok_or_else(|| {
                            Error::invalid(format!(
                                "tail must be a number of lines from 1 to {MAX_TAIL} or all, got {value:?}"
                            ))
                        })?,
                )
            }
            "since" => {
                let ms = parse_since(&value, now_ms).ok_or_else(|| bad_since(&value))?;
                q.since = Some(ms.div_euclid(1000));
            }
            "timestamps" => q.timestamps = flag("timestamps", &value)?,
            "follow" => q.follow = flag("follow", &value)?,
            _ => {}
        }
    }
    Ok(q)
}

#[utoipa::path(get, path = "/containers/{id}/logs", params(("id" = String, Path, description = "a container id (at least 12 hex digits), a container name or a sandbox id"),
        ("tail" = Option<String>, Query, description = "the last N lines (1–10000) or `all` (default)"),
        ("since" = Option<String>, Query, description = "lines at or after: a duration back from now (`10m`) or an RFC 3339 time, to the second"),
        ("timestamps" = Option<bool>, Query, description = "prefix each line with its RFC 3339 time"),
        ("follow" = Option<bool>, Query, description = "keep streaming new lines until the container stops or the client leaves")),
    responses((status = 200, description = "the container's output (stdout and stderr), chunked; with `follow=true` and `Accept: text/event-stream`, \
            server-sent events, each `data` one line",
            content((String = "text/plain; charset=utf-8"), (String = "text/event-stream"))),
        (status = 400, description = "a bad `tail`, `since`, `timestamps` or `follow`", body = crate::wire::lifecycle::LifecycleError),
        (status = 404, description = "`CONTAINER::NOT_FOUND`", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn container_logs(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, Error> {
    caller.require(Perm::Read)?;
    let q = log_query(query.as_deref().unwrap_or(""), crate::wire::time::now_ms())?;
    let stream = app.service.container_logs(&id, q, &caller).await?;
    // A broken stream ends the answer; the log says why.
    let stream = stream.take_while(move |chunk| {
        if let Err(e) = chunk {
            tracing::warn!(error = %e, "a container's log stream broke");
        }
        std::future::ready(chunk.is_ok())
    });
    let sse = q.follow
        && headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/event-stream"));
    if sse {
        let events = stream.flat_map(|chunk| {
            let text = chunk
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            let lines: Vec<Result<Event, Infallible>> =
                text.lines().map(|line| Ok(Event::default().data(line))).collect();
            futures_util::stream::iter(lines)
        });
        return Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response());
    }
    let mut resp = Body::from_stream(stream).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_queries() {
        let now = 1_000_000_000;
        let q = log_query("tail=5&since=10s&timestamps=true&follow=1", now).unwrap();
        assert_eq!(
            q,
            LogQuery {
                tail: Some(5),
                since: Some((now - 10_000) / 1000),
                timestamps: true,
                follow: true,
            }
        );
        assert_eq!(log_query("tail=all", now).unwrap().tail, None);
        for bad in ["tail=0", "tail=x", "since=soon", "timestamps=yes", "follow=2"] {
            assert!(matches!(log_query(bad, now), Err(Error::Invalid(_))), "{bad}");
        }
    }
}

//! `GET /sandboxes/{id}/events`: a sandbox's event journal, as a JSON page or (with
//! `follow=true` or `Accept: text/event-stream`) as server-sent events, `id:` the `seq`,
//! resumable with `Last-Event-ID`.

use std::convert::Infallible;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt as _;

use super::extract::Caller;
use super::App;
use crate::orchestrator::auth::Perm;
use crate::orchestrator::error::Error;
use crate::orchestrator::service::MAX_EVENTS_PAGE;

/// The routes of this resource (behind auth).
pub(super) fn routes() -> Router<App> {
    Router::new().route("/sandboxes/{id}/events", get(sandbox_events))
}

/// `?since=&limit=&follow=`.
#[derive(Debug, PartialEq, Eq)]
struct JournalQuery {
    since: i64,
    limit: usize,
    follow: bool,
}

fn journal_query(query: &str) -> Result<JournalQuery, Error> {
    let mut q = JournalQuery {
        since: 0,
        limit: 100,
        follow: false,
    };
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "since" => q.since = seq(&value)?,
            "limit" => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_EVENTS_PAGE).contains(n))
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "limit must be a number of events from 1 to {MAX_EVENTS_PAGE}, got {value:?}"
                        ))
                    })?
            }
            "follow" => {
                q.follow = match value.as_ref() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(Error::invalid(format!(
                            "follow must be true or false, got {value:?}"
                        )))
                    }
                }
            }
            _ => {}
        }
    }
    Ok(q)
}

/// A `since` or `Last-Event-ID`: a `seq`, 0 or more.
fn seq(value: &str) -> Result<i64, Error> {
    value
        .trim()
        .parse()
        .ok()
        .filter(|&n: &i64| n >= 0)
        .ok_or_else(|| {
            Error::invalid(format!(
                "since must be an event seq (an integer ≥ 0), got {value:?}"
            ))
        })
}

#[utoipa::path(get, path = "/sandboxes/{id}/events", params(("id" = String, Path),
        ("since" = Option<i64>, Query, minimum = 0, description = "events after this `seq` (default 0: from the first kept)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "at most this many events (default 100); JSON only"),
        ("follow" = Option<bool>, Query, description = "stream (SSE) the events, then each new one, until the sandbox is deleted"),
        ("Last-Event-ID" = Option<String>, Header, description = "resume a stream after this `seq` (wins over `since`)")),
    responses((status = 200, description = "the journal after `since`, oldest first (kept 24 h past the delete, readable by the same callers). \
            JSON `{items, nextSince}`; with `follow=true` or `Accept: text/event-stream`, server-sent events, each `data` a SandboxEvent \
            and `id:` its `seq`, ending after `Deleted`",
            content((crate::wire::events::SandboxEventList = "application/json"), (crate::wire::events::SandboxEvent = "text/event-stream"))),
        (status = 400, description = "a bad `since`, `limit`, `follow` or `Last-Event-ID`", body = crate::wire::lifecycle::LifecycleError),
        (status = 404, description = "`SANDBOX::NOT_FOUND`: no such sandbox or journal (someone else's too)", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn sandbox_events(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, Error> {
    caller.require(Perm::Read)?;
    let mut q = journal_query(query.as_deref().unwrap_or(""))?;
    let last_event_id = headers.get("last-event-id").map(|v| v.to_str().unwrap_or("?"));
    if let Some(last) = last_event_id {
        q.since = seq(last)?;
    }
    let sse = q.follow
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/event-stream"));
    if !sse {
        return Ok(Json(app.service.journal(&id, q.since, q.limit, &caller).await?).into_response());
    }
    let events = app.service.follow_journal(&id, q.since, &caller).await?;
    let events = events.map(|e| {
        let event = Event::default().id(e.seq.to_string());
        Ok::<_, Infallible>(
            event
                .json_data(&e)
                .unwrap_or_else(|_| Event::default().comment("unserialisable event")),
        )
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_queries() {
        assert_eq!(
            journal_query("").unwrap(),
            JournalQuery {
                since: 0,
                limit: 100,
                follow: false
            }
        );
        assert_eq!(
            journal_query("since=7&limit=5&follow=true").unwrap(),
            JournalQuery {
                since: 7,
                limit: 5,
                follow: true
            }
        );
        for bad in ["since=-1", "since=x", "limit=0", "limit=1001", "follow=yes"] {
            assert!(matches!(journal_query(bad), Err(Error::Invalid(_))), "{bad}");
        }
    }
}

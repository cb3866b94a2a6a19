//! `GET /sandboxes/{id}/diagnostics/{logs|events}`: the scoped JSON descriptor, or the
//! deprecated plain text without `scope`; `…/{inspect|summary}`: plain text only.

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::extract::Caller;
use super::App;
use crate::orchestrator::auth::Perm;
use crate::orchestrator::error::Error;
use crate::orchestrator::service::DiagnosticsQuery;

/// The routes of this resource (behind auth).
pub(super) fn routes() -> Router<App> {
    Router::new().route("/sandboxes/{id}/diagnostics/{kind}", get(diagnostics))
}

#[utoipa::path(get, path = "/sandboxes/{id}/diagnostics/{kind}", params(("id" = String, Path), ("kind" = String, Path, description = "`logs` or `events` (scoped or plain), or `inspect` (the sandbox and its container as sandboxd and the runtime see them, \
            `key: value` lines) or `summary` (inspect, the last events and the last lines of output, each under `=== name ===`), plain text only"),
        ("scope" = Option<String>, Query, description = "logs: `container` (the entrypoint's output, with timestamps), `lifecycle` (sandboxd's own log lines \
            about the sandbox, the last 1000), `process` (execd's own log), `all` (the three, each under a `=== scope ===` header); events: `lifecycle` \
            (what sandboxd recorded), `runtime` (what the runtime reported: start, die, oom, kill, pause, unpause), `all` (both, by time). \
            With a scope: the JSON descriptor; without: the deprecated plain text (the container's output, or every event)"),
        ("tail" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "the last N lines (of each section), 1–10000; default: scoped 1000, plain 100 log lines / 50 events"),
        ("since" = Option<String>, Query, description = "lines at or after: a duration back from now (`30s`, `10m`, `2h`, `1d`) or an RFC 3339 time; the container's output to the second"),
        ("timestamps" = Option<bool>, Query, description = "whether the scoped container output carries each line's time (default true)")),
    responses((status = 200, description = "with `scope`: the descriptor (JSON; `truncated` when `tail` left lines out or the content passed 4 MiB, \
            `warnings` naming a section that could not be read); without: the text itself, with the header `Deprecation: true`",
            content((crate::wire::lifecycle::DiagnosticContent = "application/json"), (String = "text/plain; charset=utf-8")),
            headers(("Deprecation" = String, description = "`true` on the plain-text form"))),
        (status = 400, description = "`DIAGNOSTICS_SCOPE_UNSUPPORTED`: a scope not served for the kind (the message lists those that are); \
            `SANDBOX::INVALID_PARAMETER`: bad `tail` or `since`, or a `scope` for `inspect`/`summary` (the message names it)", body = crate::wire::lifecycle::LifecycleError),
        (status = 403, description = "`DIAGNOSTICS::DISABLED`: the server runs with `--diagnostics false`", body = crate::wire::lifecycle::LifecycleError),
        (status = 404, body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn diagnostics(
    State(app): State<App>,
    Caller(caller): Caller,
    Path((id, kind)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, Error> {
    caller.require(Perm::Read)?;
    let q = diagnostics_query(query.as_deref().unwrap_or(""), crate::wire::time::now_ms())?;
    match q.scope {
        Some(_) => Ok(Json(app.service.diagnostics(&id, &kind, &q, &caller).await?).into_response()),
        None => {
            let text = app.service.plain_diagnostics(&id, &kind, &q, &caller).await?;
            Ok((
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    ),
                    (
                        HeaderName::from_static("deprecation"),
                        HeaderValue::from_static("true"),
                    ),
                ],
                text,
            )
                .into_response())
        }
    }
}

/// Most lines a diagnostics request may ask for.
pub(super) const MAX_TAIL: usize = 10_000;

fn diagnostics_query(query: &str, now_ms: i64) -> Result<DiagnosticsQuery, Error> {
    let mut q = DiagnosticsQuery::default();
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "scope" => q.scope = Some(value.into_owned()).filter(|s| !s.is_empty()),
            "tail" => {
                q.tail = Some(
                    value
                        .parse()
                        .ok()
                        .filter(|n| (1..=MAX_TAIL).contains(n))
                        .ok_or_else(|| {
                            Error::invalid(format!(
                                "tail must be a number of lines from 1 to {MAX_TAIL}, got {value:?}"
                            ))
                        })?,
                )
            }
            "timestamps" => {
                q.timestamps = Some(match value.as_ref() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(Error::invalid(format!(
                            "timestamps must be true or false, got {value:?}"
                        )))
                    }
                })
            }
            "since" => q.since = Some(parse_since(&value, now_ms).ok_or_else(|| bad_since(&value))?),
            _ => {}
        }
    }
    Ok(q)
}

/// The 400 of a `since` that does not parse.
pub(super) fn bad_since(value: &str) -> Error {
    Error::invalid(format!(
        "since must be a duration such as 10m (s, m, h or d) or an RFC 3339 time, got {value:?}"
    ))
}

/// `10m` (back from `now_ms`; units s, m, h, d) or an RFC 3339 time → epoch ms.
pub(super) fn parse_since(text: &str, now_ms: i64) -> Option<i64> {
    let unit_ms = match text.as_bytes().last()? {
        b's' => 1_000,
        b'm' => 60_000,
        b'h' => 3_600_000,
        b'd' => 86_400_000,
        _ => return crate::wire::time::parse_ms(text),
    };
    let digits = &text[..text.len() - 1];
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let back = digits.parse::<i64>().ok()?.checked_mul(unit_ms)?;
    now_ms.checked_sub(back)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue19_diagnostics_queries() {
        let now = 1_000_000_000;
        assert_eq!(diagnostics_query("", now).unwrap(), DiagnosticsQuery::default());
        let q = diagnostics_query("scope=container&tail=5&since=10m", now).unwrap();
        assert_eq!(
            q,
            DiagnosticsQuery {
                scope: Some("container".into()),
                tail: Some(5),
                since: Some(now - 600_000),
                timestamps: None,
            }
        );
        assert_eq!(diagnostics_query("scope=", now).unwrap().scope, None);
        let at = diagnostics_query("since=2026-03-25T10:01:13Z", now)
            .unwrap()
            .since;
        assert_eq!(at, crate::wire::time::parse_ms("2026-03-25T10:01:13Z"));
        assert_eq!(parse_since("30s", now), Some(now - 30_000));
        assert_eq!(parse_since("2h", now), Some(now - 7_200_000));
        assert_eq!(parse_since("1d", now), Some(now - 86_400_000));
        assert_eq!(
            diagnostics_query("timestamps=false", now).unwrap().timestamps,
            Some(false)
        );
        assert!(diagnostics_query("timestamps=no", now).is_err());
        for bad in ["tail=0", "tail=10001", "tail=x", "tail=-1"] {
            let e = diagnostics_query(bad, now).unwrap_err();
            assert!(e.to_string().starts_with("tail"), "{bad}: {e}");
        }
        for bad in [
            "since=10",
            "since=m",
            "since=-5m",
            "since=10w",
            "since=yesterday",
            "since=",
        ] {
            let e = diagnostics_query(bad, now).unwrap_err();
            assert!(e.to_string().starts_with("since"), "{bad}: {e}");
        }
    }
}

//! Request metrics at the edge (design §6): the [`observe`] layer that counts every answer by
//! its route template, and the routes that read them: Prometheus `GET /metrics` (bare path),
//! `GET /metrics/summary` and the 1.1.1 SDK's `POST /v1/metrics/events`.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::{MatchedPath, RawQuery, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::extract::{Caller, JsonBody};
use super::App;
use crate::orchestrator::auth::{Perm, Principal};
use crate::orchestrator::error::Error;
use crate::orchestrator::metrics::{sdk_of, Scope, Served};
use crate::orchestrator::service::{ListFilter, Service};
use crate::wire::usage::{MetricsEvent, MetricsSummary};

/// The principal a response is attributed to in the summary, put in its extensions by the
/// rate-limit layer that every API route group carries.
#[derive(Debug, Clone)]
pub(super) struct Attributed(pub String);

/// Counts every request (outermost but for the request id): the route label is the matched
/// template (`/v1/sandboxes/{id}`), `unmatched` for the 404 fallback, never the raw path.
pub(super) async fn observe(State(app): State<App>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = method_label(req.method());
    let resp = next.run(req).await;
    let elapsed = started.elapsed();
    let status = resp.status().as_u16();
    app.metrics.record(Served {
        route: &route,
        method,
        status,
        elapsed,
        principal: resp.extensions().get::<Attributed>().map(|a| a.0.as_str()),
    });
    tracing::debug!(%route, status, ms = elapsed.as_secs_f64() * 1e3, "answered");
    resp
}

/// A standard method's name; anything else is `OTHER` (a label must not take client text).
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// `GET /metrics` without a credential (with `--metrics-public`; bare path only).
pub(super) fn public_prometheus_routes() -> Router<App> {
    Router::new().route("/metrics", get(prometheus_text))
}

/// `GET /metrics` for an admin (bare path only, behind auth).
pub(super) fn prometheus_routes() -> Router<App> {
    Router::new().route("/metrics", get(prometheus_metrics))
}

/// `GET /metrics/summary` (at `/` and `/v1`, behind auth).
pub(super) fn summary_routes() -> Router<App> {
    Router::new().route("/metrics/summary", get(metrics_summary))
}

/// `POST /metrics/events` (mounted under `/v1` only, as upstream 1.1.1; behind auth).
pub(super) fn event_routes() -> Router<App> {
    Router::new().route("/metrics/events", post(metrics_event))
}

#[utoipa::path(get, path = "/metrics",
    responses((status = 200, description = "Prometheus text exposition (bare path only; without a credential when sandboxd runs with `--metrics-public`): \
        `sandboxd_http_requests_total{route,method,status}`, `sandboxd_http_request_duration_seconds{route,method}` (histogram), \
        `sandboxd_sandboxes{state}`, `sandboxd_sdk_create_duration_ms{sdk,success}` (histogram). Route labels are templates, never ids.", content_type = "text/plain"),
        (status = 401, body = crate::wire::lifecycle::LifecycleError), (status = 403, description = "not an admin", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn prometheus_metrics(
    State(app): State<App>,
    Caller(caller): Caller,
) -> Result<Response, Error> {
    caller.require(Perm::Admin)?;
    Ok(prometheus_text(State(app)).await)
}

async fn prometheus_text(State(app): State<App>) -> Response {
    match sandbox_states(&app.service, &Principal::root(), None).await {
        Ok(states) => app.metrics.set_sandboxes(&states),
        // A runtime that is down must not cost the request series; the gauge keeps its
        // last value.
        Err(e) => tracing::debug!(error = %e, "cannot count sandboxes for /metrics"),
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        app.metrics.render(),
    )
        .into_response()
}

#[utoipa::path(get, path = "/metrics/summary",
    params(("scope" = Option<String>, Query, description = "`self` (default): the caller's own requests; `all`: everyone's (admin only)")),
    responses((status = 200, description = "the caller's (or everyone's) API requests since sandboxd started; `/health`, the proxy data plane \
        and requests refused before authentication are not counted. Sandbox counts: the caller's own sandboxes for `self`, every \
        sandbox for `all`.", body = crate::wire::usage::MetricsSummary),
        (status = 400, description = "`scope` is neither `self` nor `all`", body = crate::wire::lifecycle::LifecycleError),
        (status = 403, description = "`scope=all` by a caller who is not an admin", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn metrics_summary(
    State(app): State<App>,
    Caller(caller): Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<MetricsSummary>, Error> {
    caller.require(Perm::Read)?;
    let mut all = false;
    for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        if k == "scope" {
            all = match v.as_ref() {
                "self" => false,
                "all" => true,
                other => {
                    return Err(Error::invalid(format!(
                        "scope must be self or all, got {other:?}"
                    )))
                }
            };
        }
    }
    let scope = if all {
        caller.require(Perm::Admin)?;
        Scope::All
    } else {
        Scope::Own(&caller.id)
    };
    // `self` counts the caller's own sandboxes, `all` every sandbox.
    let owner = (!all).then(|| caller.id.clone());
    let sandboxes = sandbox_states(&app.service, &caller, owner).await?;
    Ok(Json(app.metrics.summary(scope, &sandboxes)))
}

#[utoipa::path(post, path = "/v1/metrics/events", request_body = crate::wire::usage::MetricsEvent,
    responses((status = 204, description = "recorded into `sandboxd_sdk_create_duration_ms{sdk,success}`; the SDK and its version come from \
        `User-Agent: OpenSandbox-<Lang>-SDK/<version>` (`unknown` otherwise)"),
        (status = 400, description = "not a `sandbox.create` event: missing or mistyped fields, or another `eventType`", body = crate::wire::lifecycle::LifecycleError),
        (status = 401, body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn metrics_event(
    State(app): State<App>,
    Caller(caller): Caller,
    headers: HeaderMap,
    JsonBody(event): JsonBody<MetricsEvent>,
) -> Result<StatusCode, Error> {
    caller.require(Perm::Read)?;
    if event.event_type != "sandbox.create" {
        return Err(Error::invalid(format!(
            "eventType must be sandbox.create, got {:?}",
            event.event_type
        )));
    }
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    app.metrics
        .record_sdk_create(&sdk_of(agent), event.success, event.create_duration_ms);
    Ok(StatusCode::NO_CONTENT)
}

/// Sandboxes by contract state, of `owner` or (for an admin) of everyone (every page of the
/// list: one runtime call per 200).
async fn sandbox_states(
    service: &Service,
    caller: &Principal,
    owner: Option<String>,
) -> Result<BTreeMap<String, u64>, Error> {
    let mut counts = BTreeMap::new();
    let mut page = 1;
    loop {
        let list = service
            .list(
                ListFilter {
                    page,
                    page_size: 200,
                    owner: owner.clone(),
                    ..Default::default()
                },
                caller,
            )
            .await?;
        for s in &list.items {
            *counts.entry(s.status.state.clone()).or_default() += 1;
        }
        if !list.pagination.has_next_page {
            return Ok(counts);
        }
        page += 1;
    }
}

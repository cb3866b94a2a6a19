//! sandboxd's HTTP edge, the only part of the orchestrator that sees axum. Routes are mounted
//! at `/` and `/v1` (as upstream's server), in three sub-routers:
//!
//! - console: `/console/...`, the web console's embedded assets (bare path only; no credential,
//!   they hold no data).
//! - public: `/health` (and the bare `/version`; the bare `/metrics` with `--metrics-public`):
//!   no credential, never rate limited.
//! - proxy: `/sandboxes/{id}/proxy/{port}/...`: the sandbox's own token or an authorised
//!   caller, checked by the proxy itself; never rate limited, not in the summary.
//! - api: everything else, behind the auth route layer that resolves the caller into a
//!   [`Principal`](extract::Principal); inside it, each route group carries its rate class
//!   (`ratelimit::limited`), which therefore sees the principal.
//!
//! Outermost, every response carries `X-Request-ID` (echoed, or made), and every request runs
//! in a span holding it, so a 5xx logged anywhere below names its request. Inside that, the
//! metrics layer counts every answer by route template. Handlers only translate; the service
//! decides.
//!
//! - `error`: the domain error → status, catalogued code and body; `error_format`: the
//!   detailed body on `X-Error-Format: detailed`.
//! - `extract`: `JsonBody`, `Principal` and the auth layer.
//! - `ratelimit`: the rate-class route layer and its 429.
//! - `metrics`: the metrics layer, `/metrics`, `/metrics/summary`, `/v1/metrics/events`.
//! - `sandboxes`, `snapshots`, `prepulls`, `pools`, `executions`, `diagnostics`, `events` (the journal),
//!   `containers`, `proxy`, `tokens`, `system`: one file per resource, each with its `routes()`.

pub(super) mod console;
pub(super) mod containers;
pub(super) mod diagnostics;
pub(super) mod error;
mod error_format;
pub(super) mod events;
pub(super) mod executions;
mod extract;
pub(super) mod metrics;
pub(super) mod pools;
pub(super) mod prepulls;
pub(super) mod proxy;
mod ratelimit;
pub(super) mod sandboxes;
pub(super) mod snapshots;
pub(super) mod system;
pub(super) mod templates;
pub(super) mod tokens;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tracing::Instrument as _;

pub use extract::API_KEY_HEADER;

use super::metrics::Metrics;
use super::ratelimit::{Class, Limiter};
use super::service::{Service, REQUEST_ID};
use crate::relay::Relay;

const REQUEST_ID_HEADER: &str = "x-request-id";

/// Shared state of the handlers.
#[derive(Clone)]
pub struct App {
    /// The service (and through it the authority that checks credentials).
    pub service: Arc<Service>,
    /// The server proxy's connection pool.
    pub relay: Arc<Relay>,
    /// The per-caller rate limits.
    pub limiter: Arc<Limiter>,
    /// The request metrics.
    pub metrics: Arc<Metrics>,
    /// Whether `/metrics` needs no credential.
    pub metrics_public: bool,
    /// Where `docs/errors.md` is served (`error_link` of the detailed error body).
    pub errors_docs_base_url: Option<Arc<str>>,
    /// The web console's one-time WebSocket tickets.
    pub tickets: Arc<console::Tickets>,
}

/// `status` with `body` and a `Location` header naming what was made.
pub(super) fn created(
    status: axum::http::StatusCode,
    location: &str,
    body: impl serde::Serialize,
) -> Response {
    use axum::response::IntoResponse as _;
    let mut resp = (status, axum::Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(axum::http::header::LOCATION, location);
    }
    resp
}

/// The request's `X-Request-ID` (echoed or made), in its extensions.
#[derive(Clone)]
pub(super) struct RequestId(pub HeaderValue);

/// The complete router.
pub fn router(app: App) -> Router {
    let limited = |routes, class| ratelimit::limited(routes, &app, class);
    let auth = || middleware::from_fn_with_state(app.clone(), extract::authenticate);
    let api = Router::new()
        .merge(limited(
            sandboxes::create_routes().merge(templates::create_routes()),
            Class::Create,
        ))
        .merge(limited(prepulls::create_routes(), Class::Create))
        .merge(limited(pools::create_routes(), Class::Create))
        .merge(limited(executions::create_routes(), Class::Create))
        .merge(limited(executions::exec_routes(), Class::Exec))
        .merge(limited(snapshots::create_routes(), Class::Create))
        .merge(limited(
            sandboxes::routes()
                .merge(prepulls::routes())
                .merge(executions::routes())
                .merge(diagnostics::routes())
                .merge(events::routes())
                .merge(containers::routes())
                .merge(tokens::routes())
                .merge(console::routes())
                .merge(templates::routes())
                .merge(pools::routes())
                .merge(snapshots::routes())
                .merge(metrics::summary_routes())
                .merge(system::unsupported_routes()),
            Class::Read,
        ))
        .route_layer(auth());
    let lifecycle = Router::new()
        .merge(system::public_routes())
        .merge(proxy::routes())
        .merge(api);
    let v1_only = limited(metrics::event_routes(), Class::Read).route_layer(auth());
    let prometheus = if app.metrics_public {
        metrics::public_prometheus_routes()
    } else {
        limited(metrics::prometheus_routes(), Class::Read).route_layer(auth())
    };
    Router::new()
        .merge(system::version_routes())
        .merge(console::asset_routes())
        .merge(prometheus)
        .nest("/v1", v1_only)
        .merge(lifecycle.clone())
        .nest("/v1", lifecycle)
        .fallback(system::no_route)
        .layer(middleware::from_fn_with_state(app.clone(), metrics::observe))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            error_format::error_format,
        ))
        .layer(middleware::from_fn(request_id))
        .with_state(app)
}

/// Echoes `X-Request-ID` (or makes one) on every response, errors included, and runs the
/// request in a span that carries it.
async fn request_id(mut req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::new_v4().simple().to_string()).expect("hex is a valid header")
        });
    let span = tracing::info_span!(
        "request",
        id = %String::from_utf8_lossy(id.as_bytes()),
        method = %req.method(),
    );
    req.extensions_mut().insert(RequestId(id.clone()));
    let scoped = REQUEST_ID.scope(String::from_utf8_lossy(id.as_bytes()).into_owned(), next.run(req));
    let mut resp = scoped.instrument(span).await;
    resp.headers_mut().insert(REQUEST_ID_HEADER, id);
    resp
}

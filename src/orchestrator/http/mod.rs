//! sandboxd's HTTP edge, the only part of the orchestrator that sees axum. Routes are mounted
//! at `/` and `/v1` (as upstream's server), in three sub-routers:
//!
//! - public: `/health` (and the bare `/version`): no credential.
//! - proxy: `/sandboxes/{id}/proxy/{port}/...`: the sandbox's own token or an authorised
//!   caller, checked by the proxy itself.
//! - api: everything else, behind the auth route layer that resolves the caller into a
//!   [`Principal`](extract::Principal).
//!
//! Outermost, every response carries `X-Request-ID` (echoed, or made), and every request runs
//! in a span holding it, so a 5xx logged anywhere below names its request. Handlers only
//! translate; the service decides.
//!
//! - `error`: the domain error → status, catalogued code and body; `error_format`: the
//!   detailed body on `X-Error-Format: detailed`.
//! - `extract`: `JsonBody`, `Principal` and the auth layer.
//! - `sandboxes`, `diagnostics`, `proxy`, `tokens`, `system`: one file per resource, each
//!   with its `routes()`.

pub(super) mod diagnostics;
pub(super) mod error;
mod error_format;
mod extract;
pub(super) mod proxy;
pub(super) mod sandboxes;
pub(super) mod system;
pub(super) mod tokens;

use std::sync::Arc;

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tracing::Instrument as _;

pub use extract::API_KEY_HEADER;

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
    /// Where `docs/errors.md` is served (`error_link` of the detailed error body).
    pub errors_docs_base_url: Option<Arc<str>>,
}

/// The request's `X-Request-ID` (echoed or made), in its extensions.
#[derive(Clone)]
pub(super) struct RequestId(pub HeaderValue);

/// The complete router.
pub fn router(app: App) -> Router {
    let api = Router::new()
        .merge(sandboxes::routes())
        .merge(diagnostics::routes())
        .merge(tokens::routes())
        .merge(system::unsupported_routes())
        .route_layer(middleware::from_fn_with_state(app.clone(), extract::authenticate));
    let lifecycle = Router::new()
        .merge(system::public_routes())
        .merge(proxy::routes())
        .merge(api);
    let metrics = system::metrics_routes()
        .route_layer(middleware::from_fn_with_state(app.clone(), extract::authenticate));
    Router::new()
        .merge(system::version_routes())
        .nest("/v1", metrics)
        .merge(lifecycle.clone())
        .nest("/v1", lifecycle)
        .fallback(system::no_route)
        .layer(middleware::from_fn(route_log))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            error_format::error_format,
        ))
        .layer(middleware::from_fn(request_id))
        .with_state(app)
}

/// One debug line per request, keyed by the matched route template (`/sandboxes/{id}`, never
/// the raw path, so ids do not multiply the keys): where the request metrics of the tokens
/// issue attach.
async fn route_log(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "(no route)".to_owned(), |m| m.as_str().to_owned());
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    tracing::debug!(
        %route,
        status = resp.status().as_u16(),
        ms = started.elapsed().as_secs_f64() * 1e3,
        "answered"
    );
    resp
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

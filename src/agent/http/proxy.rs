//! `/proxy/{port}/{path}`: any method, forwarded to `127.0.0.1:{port}` by the proxy domain
//! module; this file only takes the request apart and maps failures (400 without a valid
//! port, 502 when the port does not answer).
//!
//! `/proxy/{execd's own port}/{path}` (the shape of the endpoint sandboxd hands out for execd)
//! never opens a connection: the request goes through execd's own routes in this process
//! ([`SelfRoutes`]), so bodies stream and WebSocket upgrades happen exactly as on a direct
//! call. Those routes have no token check of their own: only a request that has passed the
//! outer router's check reaches them, and only once, since a request served this way cannot
//! be proxied to execd again.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::error::ApiError;
use super::Routes;
use crate::agent::proxy::Target;
use crate::agent::AppState;

pub(super) fn routes() -> Routes {
    Routes::new()
        .route("/proxy", any(proxy_port))
        .route("/proxy/", any(proxy_port))
        .route("/proxy/{*rest}", any(proxy_port))
}

/// execd's routes without the token check, which serve `/proxy/{own port}/…` in-process.
///
/// The outer router puts this into the extensions of every request it has authenticated;
/// a request re-dispatched to these routes is rebuilt without it. So its presence means
/// "authenticated, and not yet served through the self-proxy": a second `/proxy/{own port}`
/// in the same request finds none and is refused.
#[derive(Clone)]
pub(super) struct SelfRoutes(Router);

impl SelfRoutes {
    /// Wraps the routes (with their state, without the token layer).
    pub(super) fn new(routes: Router) -> Self {
        Self(routes)
    }
}

/// Forwards the request (any method; WebSocket upgrades included) to `127.0.0.1:{port}/{path}`
/// inside the sandbox and streams the answer back.
#[utoipa::path(method(get, post, put, patch, delete, head, options), path = "/proxy/{port}/{path}",
    params(("port" = u16, Path, minimum = 1, maximum = 65535, description = "target port on 127.0.0.1"), ("path" = String, Path, description = "path at the target, with the query")),
    responses((status = 200, description = "whatever the target answers, streamed"),
        (status = 400, description = "missing or invalid port, or execd's own port a second time (a proxy loop)", body = crate::wire::ErrorBody),
        (status = 502, description = "nothing answers on that port", body = crate::wire::ErrorBody)))]
pub(crate) async fn proxy_port(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    // The raw path, still percent-encoded, so the target sees exactly what the client sent.
    let target = Target::parse(req.uri().path(), req.uri().query())?;
    if state.proxy.is_execd(&target) {
        return serve_in_process(&state, req, &target).await;
    }
    let client = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let req = req.map(|body| body.map_err(Into::into).boxed_unsync());
    let resp = state.proxy.forward(req, &target, client).await?;
    Ok(resp.map(Body::new))
}

/// Serves a request for execd's own port by its own routes, without a connection: the body
/// streams in and out as it is, and a WebSocket upgrade is taken over by the inner route.
async fn serve_in_process(state: &AppState, req: Request, target: &Target) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let mut extensions = parts.extensions;
    let Some(SelfRoutes(routes)) = extensions.remove::<SelfRoutes>() else {
        return Err(state.proxy.loop_error().into());
    };
    let mut inner = Request::new(body);
    *inner.method_mut() = parts.method;
    *inner.uri_mut() = target.uri()?;
    *inner.version_mut() = parts.version;
    *inner.headers_mut() = parts.headers;
    // Only what the routes read from the extensions goes along: the connection's upgrade
    // handle (WebSocket routes) and the peer's address. Not the outer router's own (its path
    // parameters would be added to the inner route's), and not `SelfRoutes`.
    if let Some(upgrade) = extensions.remove::<hyper::upgrade::OnUpgrade>() {
        inner.extensions_mut().insert(upgrade);
    }
    if let Some(peer) = extensions.remove::<ConnectInfo<SocketAddr>>() {
        inner.extensions_mut().insert(peer);
    }
    match routes.oneshot(inner).await {
        Ok(resp) => Ok(resp),
        Err(never) => match never {},
    }
}

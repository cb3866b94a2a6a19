//! `/proxy/{port}/{path}`: any method, forwarded to `127.0.0.1:{port}` by the proxy domain
//! module; this file only takes the request apart and maps failures (400 without a valid
//! port, 502 when the port does not answer).

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use http_body_util::BodyExt;

use super::error::ApiError;
use crate::agent::proxy::Target;
use crate::agent::AppState;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/proxy", any(proxy_port))
        .route("/proxy/", any(proxy_port))
        .route("/proxy/{*rest}", any(proxy_port))
}

/// Forwards the request (any method; WebSocket upgrades included) to `127.0.0.1:{port}/{path}`
/// inside the sandbox and streams the answer back.
#[utoipa::path(method(get, post, put, patch, delete, head, options), path = "/proxy/{port}/{path}",
    params(("port" = u16, Path, description = "target port on 127.0.0.1"), ("path" = String, Path, description = "path at the target, with the query")),
    responses((status = 200, description = "whatever the target answers, streamed"),
        (status = 400, description = "missing or invalid port", body = crate::wire::ErrorBody),
        (status = 502, description = "nothing answers on that port", body = crate::wire::ErrorBody)))]
pub(crate) async fn proxy_port(State(state): State<AppState>, req: Request) -> Result<Response, ApiError> {
    // The raw path, still percent-encoded, so the target sees exactly what the client sent.
    let target = Target::parse(req.uri().path(), req.uri().query())?;
    let client = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let req = req.map(|body| body.map_err(Into::into).boxed_unsync());
    let resp = state.proxy.forward(req, &target, client).await?;
    Ok(resp.map(Body::new))
}

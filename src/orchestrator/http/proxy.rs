//! The server proxy `ANY /sandboxes/{id}/proxy/{port}/...`: streams a request to a sandbox
//! port and the answer back. Its own credential check: the sandbox's token, or a caller the
//! auth layer would let in. Not rate limited.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::Response;
use axum::routing::any;
use axum::Router;
use http_body_util::BodyExt;

use super::console;
use super::extract::{self, API_KEY_HEADER};
use super::App;
use crate::auth::{constant_time_eq, TOKEN_HEADER};
use crate::orchestrator::error::{AuthFailure, Error};
use crate::orchestrator::runtime::Dial;
use crate::orchestrator::spec;
use crate::relay::{OverError, RelayError};

/// The proxy's routes (mounted at `/` and `/v1`, outside the auth layer).
pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/sandboxes/{id}/proxy/{port}", any(proxy))
        .route("/sandboxes/{id}/proxy/{port}/", any(proxy))
        .route("/sandboxes/{id}/proxy/{port}/{*rest}", any(proxy))
}

/// The sandbox and port of a proxied request.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct ProxyPath {
    id: String,
    port: String,
}

/// Marks a response that is the sandbox's own answer, which `error_format` leaves alone.
#[derive(Debug, Clone, Copy)]
pub(super) struct Relayed;

/// Headers that must never reach a sandbox: sandboxd's own credentials and the caller's.
const STRIPPED: [HeaderName; 3] = [
    header::AUTHORIZATION,
    header::COOKIE,
    HeaderName::from_static(API_KEY_HEADER),
];

/// `ANY /sandboxes/{id}/proxy/{port}/...`: streams the request to the sandbox port and the
/// answer back (SSE unbuffered, WebSocket upgrades tunnelled). The caller proves itself with
/// the API key or with the sandbox's own token (what the endpoint's `headers` hand out);
/// either way the sandbox receives its token and none of the caller's credentials.
#[utoipa::path(method(get, post, put, patch, delete, head, options), path = "/sandboxes/{id}/proxy/{port}/{path}",
    params(("id" = String, Path), ("port" = u16, Path, minimum = 1, maximum = 65535), ("path" = String, Path, description = "path at the target, with the query")),
    responses((status = 200, description = "whatever the sandbox port answers, streamed (WebSocket upgrades relayed)"),
        (status = 400, description = "`SANDBOX::INVALID_PARAMETER`: a port outside 1–65535", body = crate::wire::lifecycle::LifecycleError),
        (status = 401, description = "neither the API key nor the sandbox token", body = crate::wire::lifecycle::LifecycleError), (status = 404, body = crate::wire::lifecycle::LifecycleError),
        (status = 409, description = "`DOCKER::SANDBOX_NOT_RUNNING`: the sandbox is Pending, Paused, Failed or Terminated (the message names it); answered at once", body = crate::wire::lifecycle::LifecycleError), (status = 502, body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn proxy(
    State(app): State<App>,
    Path(at): Path<ProxyPath>,
    req: Request,
) -> Result<Response, Error> {
    // The rest of the path goes on exactly as it came, still percent-encoded (`Path` would
    // decode it): it is what follows `/sandboxes/{id}/proxy/{port}` in the raw path, which is
    // relative to this router's mount point (`/v1` is already stripped).
    let raw = req.uri().path().to_owned();
    let rest = raw.splitn(6, '/').nth(5).unwrap_or("");
    let id = at.id.as_str();
    if rest
        .split('/')
        .any(|seg| seg == ".." || seg.eq_ignore_ascii_case("%2e%2e"))
    {
        return Err(Error::invalid("the proxy path must not contain .."));
    }
    let port = spec::parse_port(&at.port)?;
    // A WebSocket upgrade may prove itself with a console ticket instead of headers (a
    // browser cannot set them); the ticket is spent here and never forwarded.
    let (ticket, query) = match req.uri().query() {
        Some(q) => {
            let (ticket, rest) = console::take_ticket(q);
            (ticket, (!rest.is_empty()).then_some(rest))
        }
        None => (None, None),
    };
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let caller = match ticket {
        Some(t) if upgrade => app
            .tickets
            .redeem(&t, id)
            .ok_or(Error::Unauthenticated(AuthFailure::InvalidTicket)),
        Some(_) => Err(Error::invalid(format!(
            "{}: a console ticket is only taken on a WebSocket upgrade",
            console::TICKET_PARAM
        ))),
        None => extract::principal(&app, req.headers()),
    };
    let route = match app.service.proxy_target(id, port).await {
        Ok(found) => found,
        // Without a credential, an unknown sandbox is a 401 like any other: existence is
        // not told to strangers.
        Err(e) => return Err(caller.err().unwrap_or(e)),
    };
    let token = route.token;
    let by_token = req
        .headers()
        .get(TOKEN_HEADER)
        .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
    if !by_token && !caller?.may_see(&route.owner) {
        // Someone else's sandbox is not found, as on every other route.
        return Err(Error::no_sandbox(id));
    }
    let target = route.target?;
    let mut path_and_query = format!("{}/{rest}", target.prefix);
    if let Some(q) = query {
        path_and_query.push('?');
        path_and_query.push_str(&q);
    }
    let client = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let req = req.map(|body: Body| body.map_err(Into::into).boxed_unsync());
    let sandbox_token = target.execd.then_some(token);
    let edit = |headers: &mut axum::http::HeaderMap| {
        for name in &STRIPPED {
            headers.remove(name);
        }
        headers.remove(TOKEN_HEADER);
        if let Some(token) = sandbox_token
            .as_deref()
            .and_then(|t| HeaderValue::from_str(t).ok())
        {
            headers.insert(TOKEN_HEADER, token);
        }
    };
    let resp = match &target.dial {
        Dial::Tcp(addr) => app
            .relay
            .forward(req, *addr, &path_and_query, client, edit)
            .await
            .map_err(|e| match e {
                RelayError::Uri(e) => Failed::Path(e),
                other => Failed::Unreachable(other.to_string()),
            }),
        Dial::Tunnel(tunnel) => match tokio::time::timeout(TUNNEL_OPEN, tunnel.open()).await {
            Ok(Ok(io)) => app
                .relay
                .forward_over(req, io, &tunnel.name, &path_and_query, client, edit)
                .await
                .map_err(|e| match e {
                    OverError::Uri(e) => Failed::Path(e),
                    other => Failed::Unreachable(other.to_string()),
                }),
            Ok(Err(e)) => Err(Failed::Unreachable(format!("cannot open {}: {e}", tunnel.name))),
            Err(_) => Err(Failed::Unreachable(format!(
                "cannot open {} within {TUNNEL_OPEN:?}",
                tunnel.name
            ))),
        },
    };
    match resp {
        Ok(resp) => {
            let mut resp = resp.map(Body::new);
            resp.extensions_mut().insert(Relayed);
            Ok(resp)
        }
        Err(Failed::Path(e)) => Err(Error::invalid(format!("invalid proxy path: {e}"))),
        // An exited container's port refuses at once: say so by its state, not as a 502.
        Err(Failed::Unreachable(reason)) => match app.service.unreachable(id).await {
            Some(state) => Err(state),
            None => Err(Error::Unreachable {
                id: id.to_owned(),
                port,
                reason,
            }),
        },
    }
}

/// How long opening a runtime's tunnel may take (as the relay's TCP connect timeout).
const TUNNEL_OPEN: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a request was not relayed.
enum Failed {
    /// The path and query do not form a valid URI.
    Path(axum::http::Error),
    /// The sandbox port could not be reached, or broke off before answering.
    Unreachable(String),
}

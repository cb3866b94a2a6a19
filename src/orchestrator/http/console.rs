//! The web console: static assets at `/console` (embedded in the binary, served without a
//! credential, they hold no data) and the one-time WebSocket tickets the console's terminal
//! needs, because a browser cannot put headers on a WebSocket.
//!
//! - `GET /console[/]` and `GET /console/{file}`: `index.html`, the script, the style sheet
//!   and the vendored xterm.js (Debian's `node-xterm`, `console/vendor/`), each with a strict
//!   Content-Security-Policy (only this origin; no inline script or style, no eval).
//! - `POST /sandboxes/{id}/tickets` (behind auth): a ticket for one WebSocket upgrade through
//!   the server proxy to that sandbox, good for [`TICKET_TTL`] and one use, carrying the
//!   caller's principal. The proxy takes it from the `sandboxd_ticket` query parameter (a
//!   random value, not the credential) and strips it before the sandbox sees the request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use super::extract::Caller;
use super::App;
use crate::orchestrator::auth::{Perm, Principal};
use crate::orchestrator::error::Error;

/// How long a ticket may wait for its WebSocket.
pub const TICKET_TTL: Duration = Duration::from_secs(30);
/// Most tickets held at once; past it the oldest is dropped (each lives 30 s, and minting is
/// rate limited, so only a flood reaches it).
const MAX_TICKETS: usize = 10_000;
/// The query parameter the proxy reads a ticket from.
pub const TICKET_PARAM: &str = "sandboxd_ticket";

/// The policy of every console asset: this origin only (`'self'` covers its `ws:` too),
/// nothing inline, no eval, no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The embedded assets: name, content type, bytes.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("console/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("console/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("console/app.css"),
    ),
    (
        "vendor/xterm.js",
        "text/javascript; charset=utf-8",
        include_bytes!("console/vendor/xterm.js"),
    ),
    (
        "vendor/xterm.css",
        "text/css; charset=utf-8",
        include_bytes!("console/vendor/xterm.css"),
    ),
    (
        "vendor/LICENSE.xterm",
        "text/plain; charset=utf-8",
        include_bytes!("console/vendor/LICENSE.xterm"),
    ),
];

/// The asset routes (public: mounted at `/` only, outside auth).
pub(super) fn asset_routes() -> Router<App> {
    Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/{*file}", get(asset))
}

/// The ticket route (behind auth).
pub(super) fn routes() -> Router<App> {
    Router::new().route("/sandboxes/{id}/tickets", post(mint_ticket))
}

async fn index() -> Response {
    serve("index.html")
}

async fn asset(Path(file): Path<String>) -> Response {
    serve(&file)
}

fn serve(name: &str) -> Response {
    let Some((_, kind, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return Error::NoRoute.into_response();
    };
    let mut resp = (StatusCode::OK, *body).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// A minted ticket (`POST /sandboxes/{id}/tickets`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProxyTicket {
    /// The ticket: pass it as the `sandboxd_ticket` query parameter of one WebSocket upgrade
    /// through `/sandboxes/{id}/proxy/{port}/...`.
    pub ticket: String,
    /// Seconds it stays valid if unused.
    pub expires_in_seconds: u64,
}

#[utoipa::path(post, path = "/sandboxes/{id}/tickets", params(("id" = String, Path)),
    responses((status = 201, description = "a one-time ticket for one WebSocket upgrade through the server proxy to this sandbox \
            (the web console's terminal: a browser cannot set headers on a WebSocket); valid 30 s, carries the caller's identity", body = ProxyTicket),
        (status = 401, description = "no or a bad credential", body = crate::wire::lifecycle::LifecycleError),
        (status = 404, description = "`SANDBOX::NOT_FOUND`: no such sandbox (someone else's too)", body = crate::wire::lifecycle::LifecycleError),
        (status = 409, description = "`DOCKER::SANDBOX_NOT_RUNNING`: the sandbox is not running", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn mint_ticket(
    State(app): State<App>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    caller.require(Perm::Read)?;
    let route = app
        .service
        .proxy_target(&id, crate::orchestrator::runtime::EXECD_PORT)
        .await?;
    if !caller.may_see(&route.owner) {
        return Err(Error::no_sandbox(&id));
    }
    route.target?;
    let ticket = app.tickets.mint(&id, caller);
    let body = ProxyTicket {
        ticket,
        expires_in_seconds: TICKET_TTL.as_secs(),
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The tickets not yet used nor expired.
#[derive(Default)]
pub struct Tickets {
    held: Mutex<HashMap<String, Held>>,
}

struct Held {
    sandbox: String,
    principal: Principal,
    expires: Instant,
}

impl Tickets {
    /// A new ticket for `sandbox`, acting as `principal`.
    pub fn mint(&self, sandbox: &str, principal: Principal) -> String {
        let ticket = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let now = Instant::now();
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|_, h| h.expires > now);
        if held.len() >= MAX_TICKETS {
            if let Some(oldest) = held.iter().min_by_key(|(_, h)| h.expires).map(|(k, _)| k.clone()) {
                held.remove(&oldest);
            }
        }
        held.insert(
            ticket.clone(),
            Held {
                sandbox: sandbox.to_owned(),
                principal,
                expires: now + TICKET_TTL,
            },
        );
        ticket
    }

    /// Uses `ticket` up: its principal when it was minted for `sandbox` and has not expired.
    /// A ticket presented for another sandbox is spent all the same.
    pub fn redeem(&self, ticket: &str, sandbox: &str) -> Option<Principal> {
        let held = self
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(ticket)?;
        (held.sandbox == sandbox && held.expires > Instant::now()).then_some(held.principal)
    }
}

/// Splits the ticket out of a query string: the ticket (if any) and the query without it.
pub(super) fn take_ticket(query: &str) -> (Option<String>, String) {
    let mut ticket = None;
    let rest: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some((TICKET_PARAM, value)) => {
                ticket = Some(value.to_owned());
                false
            }
            _ => !pair.is_empty(),
        })
        .collect();
    (ticket, rest.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_good_once_and_for_its_sandbox_only() {
        let tickets = Tickets::default();
        let t = tickets.mint("a", Principal::root());
        assert_eq!(t.len(), 64);
        assert!(tickets.redeem(&t, "a").is_some());
        assert!(tickets.redeem(&t, "a").is_none(), "second use");
        let t = tickets.mint("a", Principal::root());
        assert!(tickets.redeem(&t, "b").is_none(), "other sandbox");
        assert!(tickets.redeem(&t, "a").is_none(), "spent by the wrong try");
        assert!(tickets.redeem("nope", "a").is_none());
    }

    #[test]
    fn the_ticket_is_taken_out_of_the_query() {
        assert_eq!(
            take_ticket("a=1&sandboxd_ticket=xy&b=2"),
            (Some("xy".into()), "a=1&b=2".into())
        );
        assert_eq!(take_ticket("a=1"), (None, "a=1".into()));
        assert_eq!(
            take_ticket("sandboxd_ticket=z"),
            (Some("z".into()), String::new())
        );
    }

    #[test]
    fn every_asset_is_served_with_the_policy_and_others_are_404() {
        for (name, _, _) in ASSETS {
            let resp = serve(name);
            assert_eq!(resp.status(), StatusCode::OK, "{name}");
            assert_eq!(resp.headers()[header::CONTENT_SECURITY_POLICY], CSP);
        }
        assert_eq!(serve("../Cargo.toml").status(), StatusCode::NOT_FOUND);
        assert_eq!(serve("vendor/").status(), StatusCode::NOT_FOUND);
    }
}

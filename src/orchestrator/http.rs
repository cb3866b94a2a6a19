//! The lifecycle API's HTTP edge: routes (mounted at `/` and `/v1`), the API-key check, the
//! `X-Request-ID` echo, body and query parsing into 400s, and the server proxy
//! `/sandboxes/{id}/proxy/{port}/...`. Handlers only translate; the service decides.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, patch, post};
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use super::error::Error;
use super::sandboxes::{parse_port, ListFilter, Service};
use crate::auth::{constant_time_eq, TOKEN_HEADER};
use crate::relay::{Relay, RelayError};
use crate::wire::lifecycle::{CreateSandboxRequest, RenewExpiration};

/// The API key header (upstream's name).
pub const API_KEY_HEADER: &str = "open-sandbox-api-key";
const REQUEST_ID: &str = "x-request-id";
/// Largest JSON body accepted on lifecycle routes.
const MAX_BODY: usize = 1 << 20;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct App {
    /// The service.
    pub service: Arc<Service>,
    /// The API key, when one is required.
    pub api_key: Option<Arc<str>>,
    /// The server proxy's connection pool.
    pub relay: Arc<Relay>,
}

/// The complete router.
pub fn router(app: App) -> Router {
    let lifecycle = Router::new()
        .route("/health", get(health))
        .route("/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(get_one).delete(delete))
        .route("/sandboxes/{id}/metadata", patch(patch_metadata))
        .route("/sandboxes/{id}/pause", post(pause))
        .route("/sandboxes/{id}/resume", post(resume))
        .route("/sandboxes/{id}/renew-expiration", post(renew))
        .route("/sandboxes/{id}/endpoints/{port}", get(endpoint))
        .route("/sandboxes/{id}/diagnostics/{kind}", get(diagnostics))
        .route("/sandboxes/{id}/proxy/{port}", any(proxy))
        .route("/sandboxes/{id}/proxy/{port}/", any(proxy))
        .route("/sandboxes/{id}/proxy/{port}/{*rest}", any(proxy))
        .route("/sandboxes/{id}/snapshots", any(no_snapshots))
        .route("/snapshots", any(no_snapshots))
        .route("/snapshots/{id}", any(no_snapshots))
        .route("/sandboxes/{id}/networkpolicy", any(no_network_policy))
        .route("/templates", any(no_templates))
        .route("/templates/{id}", any(no_templates))
        .route("/pools", any(no_pools))
        .route("/pools/{name}", any(no_pools));
    Router::new()
        .route("/version", get(version))
        .route("/v1/metrics/events", post(metrics_event))
        .merge(lifecycle.clone())
        .nest("/v1", lifecycle)
        .fallback(no_route)
        .layer(middleware::from_fn_with_state(app.clone(), require_api_key))
        .layer(middleware::from_fn(request_id))
        .with_state(app)
}

/// Echoes `X-Request-ID` (or makes one) on every response, errors included.
async fn request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_str(&uuid::Uuid::new_v4().simple().to_string()).expect("hex is a valid header")
        });
    let mut resp = next.run(req).await;
    resp.headers_mut().insert(REQUEST_ID, id);
    resp
}

/// `/sandboxes/{id}/proxy/{port}...`, with or without `/v1`: checked by the proxy itself.
fn is_proxy_path(path: &str) -> bool {
    let path = path.strip_prefix("/v1").unwrap_or(path);
    let mut parts = path.split('/');
    matches!(
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()),
        (Some(""), Some("sandboxes"), Some(id), Some("proxy"), Some(port))
            if !id.is_empty() && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
    )
}

fn api_key_ok(app: &App, headers: &HeaderMap) -> Result<(), Error> {
    let Some(expected) = &app.api_key else {
        return Ok(());
    };
    match headers.get(API_KEY_HEADER) {
        None => Err(Error::new(
            StatusCode::UNAUTHORIZED,
            "MISSING_API_KEY",
            "the OPEN-SANDBOX-API-KEY header is required",
        )),
        Some(given) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(Error::new(
            StatusCode::UNAUTHORIZED,
            "INVALID_API_KEY",
            "the OPEN-SANDBOX-API-KEY header is not valid",
        )),
    }
}

async fn require_api_key(State(app): State<App>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let exempt = path == "/health" || path == "/v1/health" || path == "/version" || is_proxy_path(path);
    if !exempt {
        if let Err(e) = api_key_ok(&app, req.headers()) {
            return e.into_response();
        }
    }
    next.run(req).await
}

/// Reads a JSON body, turning every failure into a 400 that says what was wrong.
async fn json_body<T: DeserializeOwned>(req: Request) -> Result<T, Error> {
    let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY)
        .await
        .map_err(|e| Error::invalid(format!("cannot read the body (at most {MAX_BODY} bytes): {e}")))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::invalid("a JSON body is required"));
    }
    serde_json::from_slice(&bytes).map_err(|e| Error::invalid(format!("invalid JSON body: {e}")))
}

#[utoipa::path(get, path = "/health", responses((status = 200, description = "`{\"status\": \"healthy\"}`")))]
pub(crate) async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "healthy"}))
}

#[utoipa::path(get, path = "/version", responses((status = 200, description = "`{version, runtime, dockerApiVersion}` (bare path only)")))]
pub(crate) async fn version(State(app): State<App>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "runtime": "docker",
        "dockerApiVersion": app.service.docker_api_version(),
    }))
}

#[utoipa::path(post, path = "/v1/metrics/events", responses((status = 204, description = "accepted and ignored (the 1.1.1 SDK's fire-and-forget create metric)")))]
pub(crate) async fn metrics_event() -> StatusCode {
    StatusCode::NO_CONTENT
}

#[utoipa::path(post, path = "/sandboxes", request_body = crate::wire::lifecycle::CreateSandboxRequest,
    responses((status = 202, description = "running: execd answered /ping", body = crate::wire::lifecycle::CreateSandboxResponse),
        (status = 400, description = "invalid request, unsupported field, or an image that cannot be had", body = crate::wire::lifecycle::LifecycleError),
        (status = 401, body = crate::wire::lifecycle::LifecycleError), (status = 500, description = "the sandbox failed to start (its last output in the message)", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn create(State(app): State<App>, req: Request) -> Result<Response, Error> {
    let body: CreateSandboxRequest = json_body(req).await?;
    let created = app.service.create(body).await?;
    let location = HeaderValue::from_str(&format!("/v1/sandboxes/{}", created.id)).ok();
    let mut resp = (StatusCode::ACCEPTED, Json(created)).into_response();
    if let Some(location) = location {
        resp.headers_mut().insert(header::LOCATION, location);
    }
    Ok(resp)
}

#[utoipa::path(get, path = "/sandboxes", params(("state" = Option<Vec<String>>, Query, description = "repeatable; OR; case-insensitive"),
        ("metadata" = Option<String>, Query, description = "url-encoded `k=v&k2=v2`; AND"), ("page" = Option<u32>, Query), ("pageSize" = Option<u32>, Query)),
    responses((status = 200, body = crate::wire::lifecycle::ListSandboxesResponse), (status = 400, body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn list(State(app): State<App>, RawQuery(query): RawQuery) -> Result<Response, Error> {
    let filter = list_filter(query.as_deref().unwrap_or(""))?;
    Ok(Json(app.service.list(filter).await?).into_response())
}

/// `?state=a&state=b&metadata=k%3Dv%26k2%3Dv2&page=1&pageSize=20`.
fn list_filter(query: &str) -> Result<ListFilter, Error> {
    let mut filter = ListFilter {
        page: 1,
        page_size: 20,
        ..Default::default()
    };
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "state" => filter.states.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            ),
            "metadata" => {
                for (k, v) in form_urlencoded::parse(value.as_bytes()) {
                    if k.is_empty() {
                        return Err(Error::new(
                            StatusCode::BAD_REQUEST,
                            "INVALID_METADATA_FORMAT",
                            format!("metadata filter {value:?} must be k=v pairs joined by &"),
                        ));
                    }
                    filter.metadata.push((k.into_owned(), v.into_owned()));
                }
            }
            "page" => {
                filter.page =
                    value.parse().ok().filter(|&p| p >= 1).ok_or_else(|| {
                        Error::invalid(format!("page must be an integer ≥ 1, got {value:?}"))
                    })?
            }
            "pageSize" | "page_size" => {
                filter.page_size = value
                    .parse()
                    .ok()
                    .filter(|p| (1..=200).contains(p))
                    .ok_or_else(|| Error::invalid(format!("pageSize must be from 1 to 200, got {value:?}")))?
            }
            _ => {}
        }
    }
    Ok(filter)
}

#[utoipa::path(get, path = "/sandboxes/{id}", params(("id" = String, Path)),
    responses((status = 200, body = crate::wire::lifecycle::Sandbox), (status = 404, body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn get_one(State(app): State<App>, Path(id): Path<String>) -> Result<Response, Error> {
    Ok(Json(app.service.get(&id).await?).into_response())
}

#[utoipa::path(delete, path = "/sandboxes/{id}", params(("id" = String, Path)),
    responses((status = 204, description = "container killed and removed"), (status = 404, body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn delete(State(app): State<App>, Path(id): Path<String>) -> Result<StatusCode, Error> {
    app.service.delete(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(patch, path = "/sandboxes/{id}/metadata", params(("id" = String, Path)), request_body(content = Object, description = "JSON merge patch: string values set, null deletes"),
    responses((status = 200, body = crate::wire::lifecycle::Sandbox), (status = 400, body = crate::wire::lifecycle::LifecycleError), (status = 404, body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn patch_metadata(
    State(app): State<App>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, Error> {
    let patch: serde_json::Value = json_body(req).await?;
    let serde_json::Value::Object(patch) = patch else {
        return Err(Error::invalid("the metadata patch must be a JSON object"));
    };
    Ok(Json(app.service.patch_metadata(&id, patch).await?).into_response())
}

#[utoipa::path(post, path = "/sandboxes/{id}/pause", params(("id" = String, Path)),
    responses((status = 202, description = "paused (a freeze the cgroup v1 freezer gives up on while processes start is retried: 5 tries over about 2 s)"),
        (status = 404, body = crate::wire::lifecycle::LifecycleError), (status = 409, description = "`DOCKER::SANDBOX_NOT_RUNNING`: not running (the message names the state)", body = crate::wire::lifecycle::LifecycleError),
        (status = 500, description = "`SANDBOX::INTERNAL_ERROR`: the freezer failed on every try; the sandbox stays Running", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn pause(State(app): State<App>, Path(id): Path<String>) -> Result<StatusCode, Error> {
    app.service.pause(&id).await?;
    Ok(StatusCode::ACCEPTED)
}

#[utoipa::path(post, path = "/sandboxes/{id}/resume", params(("id" = String, Path)),
    responses((status = 202, description = "resumed (retried as pause is)"), (status = 404, body = crate::wire::lifecycle::LifecycleError),
        (status = 409, description = "`DOCKER::SANDBOX_NOT_PAUSED`: not paused (the message names the state)", body = crate::wire::lifecycle::LifecycleError),
        (status = 500, description = "`SANDBOX::INTERNAL_ERROR`: the freezer failed on every try; the sandbox stays Paused", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn resume(State(app): State<App>, Path(id): Path<String>) -> Result<StatusCode, Error> {
    app.service.resume(&id).await?;
    Ok(StatusCode::ACCEPTED)
}

#[utoipa::path(post, path = "/sandboxes/{id}/renew-expiration", params(("id" = String, Path)), request_body = crate::wire::lifecycle::RenewExpiration,
    responses((status = 200, body = crate::wire::lifecycle::RenewExpiration), (status = 400, description = "not RFC 3339, or not in the future", body = crate::wire::lifecycle::LifecycleError),
        (status = 404, body = crate::wire::lifecycle::LifecycleError), (status = 409, description = "manual-cleanup sandbox", body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn renew(
    State(app): State<App>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, Error> {
    let body: RenewExpiration = json_body(req).await?;
    Ok(Json(app.service.renew(&id, body).await?).into_response())
}

#[utoipa::path(get, path = "/sandboxes/{id}/endpoints/{port}", params(("id" = String, Path), ("port" = u16, Path),
        ("use_server_proxy" = Option<bool>, Query), ("expires" = Option<i64>, Query, description = "refused: no signed endpoints on Docker")),
    responses((status = 200, body = crate::wire::lifecycle::Endpoint), (status = 400, body = crate::wire::lifecycle::LifecycleError), (status = 404, body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn endpoint(
    State(app): State<App>,
    Path((id, port)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, Error> {
    let (mut use_server_proxy, mut expires) = (false, None);
    for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "use_server_proxy" | "useServerProxy" => {
                use_server_proxy = match v.to_ascii_lowercase().as_str() {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" | "" => false,
                    other => {
                        return Err(Error::invalid(format!(
                            "use_server_proxy must be a boolean, got {other:?}"
                        )))
                    }
                }
            }
            "expires" => expires = Some(v.into_owned()),
            _ => {}
        }
    }
    Ok(Json(
        app.service
            .endpoint(&id, &port, use_server_proxy, expires.as_deref())?,
    )
    .into_response())
}

#[utoipa::path(get, path = "/sandboxes/{id}/diagnostics/{kind}", params(("id" = String, Path), ("kind" = String, Path, description = "`logs` (the container's output) or `events` (sandboxd's event log for the sandbox)"),
        ("scope" = Option<String>, Query, description = "with it: the JSON descriptor; without it: the deprecated plain text (`osb devops`, older clients)"),
        ("tail" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "the last N lines, 1–10000; default: scoped 2000 log lines / every kept event, plain 100 log lines / 50 events"),
        ("since" = Option<String>, Query, description = "lines at or after: a duration back from now (`30s`, `10m`, `2h`, `1d`) or an RFC 3339 time; logs to the second")),
    responses((status = 200, description = "with `scope`: the descriptor (JSON); without: the text itself, with the header `Deprecation: true`",
            content((crate::wire::lifecycle::DiagnosticContent = "application/json"), (String = "text/plain; charset=utf-8")),
            headers(("Deprecation" = String, description = "`true` on the plain-text form"))),
        (status = 400, description = "bad `tail` or `since` (the message names it)", body = crate::wire::lifecycle::LifecycleError), (status = 404, body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn diagnostics(
    State(app): State<App>,
    Path((id, kind)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, Error> {
    let q = diagnostics_query(query.as_deref().unwrap_or(""), crate::wire::time::now_ms())?;
    match q.scope {
        Some(scope) => Ok(Json(
            app.service
                .diagnostics(&id, &kind, &scope, q.tail, q.since)
                .await?,
        )
        .into_response()),
        None => {
            let text = app.service.plain_diagnostics(&id, &kind, q.tail, q.since).await?;
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

/// The diagnostics query: `scope` (absent or empty: the plain form), `tail`, `since`.
#[derive(Debug, Default, PartialEq, Eq)]
struct DiagnosticsQuery {
    scope: Option<String>,
    tail: Option<usize>,
    /// Epoch ms.
    since: Option<i64>,
}

/// Most lines a diagnostics request may ask for.
const MAX_TAIL: usize = 10_000;

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
            "since" => {
                q.since = Some(parse_since(&value, now_ms).ok_or_else(|| {
                    Error::invalid(format!(
                    "since must be a duration such as 10m (s, m, h or d) or an RFC 3339 time, got {value:?}"
                ))
                })?)
            }
            _ => {}
        }
    }
    Ok(q)
}

/// `10m` (back from `now_ms`; units s, m, h, d) or an RFC 3339 time → epoch ms.
fn parse_since(text: &str, now_ms: i64) -> Option<i64> {
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

async fn no_snapshots() -> Error {
    Error::not_implemented(
        "SANDBOX::API_NOT_SUPPORTED",
        "snapshots are not supported by sandboxd's Docker runtime",
    )
}

async fn no_network_policy() -> Error {
    Error::not_implemented(
        "SANDBOX::API_NOT_SUPPORTED",
        "network policies need the egress sidecar, which sandboxd's Docker runtime does not run",
    )
}

async fn no_templates() -> Error {
    Error::not_implemented(
        "FSB::API_NOT_SUPPORTED",
        "template management requires the kubernetes runtime",
    )
}

async fn no_pools() -> Error {
    Error::not_implemented(
        "SANDBOX::API_NOT_SUPPORTED",
        "pools require the kubernetes runtime",
    )
}

async fn no_route() -> Error {
    Error::new(StatusCode::NOT_FOUND, "GENERAL::NOT_FOUND", "no such route")
}

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
    params(("id" = String, Path), ("port" = u16, Path), ("path" = String, Path, description = "path at the target, with the query")),
    responses((status = 200, description = "whatever the sandbox port answers, streamed (WebSocket upgrades relayed)"),
        (status = 401, description = "neither the API key nor the sandbox token", body = crate::wire::lifecycle::LifecycleError), (status = 404, body = crate::wire::lifecycle::LifecycleError),
        (status = 409, description = "`DOCKER::SANDBOX_NOT_RUNNING`: the sandbox is Pending, Paused, Failed or Terminated (the message names it); answered at once", body = crate::wire::lifecycle::LifecycleError), (status = 502, body = crate::wire::lifecycle::LifecycleError)))]
pub(crate) async fn proxy(State(app): State<App>, req: Request) -> Result<Response, Error> {
    let path = req.uri().path().to_owned();
    if path
        .split('/')
        .any(|seg| seg == ".." || seg.eq_ignore_ascii_case("%2e%2e"))
    {
        return Err(Error::invalid("the proxy path must not contain .."));
    }
    // `/sandboxes/{id}/proxy/{port}{rest}` (the /v1 prefix is gone inside the nested router).
    let mut parts = path.splitn(6, '/');
    let (_, _, id, _, port) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    );
    let (Some(id), Some(port)) = (id, port) else {
        return Err(Error::invalid("expected /sandboxes/{id}/proxy/{port}/..."));
    };
    let rest = parts
        .next()
        .map(|r| format!("/{r}"))
        .unwrap_or_else(|| "/".to_owned());
    let port = parse_port(port)?;
    let (target, token) = app.service.proxy_target(id, port)?;
    let by_token = req
        .headers()
        .get(TOKEN_HEADER)
        .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
    if !by_token {
        api_key_ok(&app, req.headers())?;
    }
    let mut path_and_query = format!("{}{rest}", target.prefix);
    if let Some(q) = req.uri().query() {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    let client = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let req = req.map(|body: Body| body.map_err(Into::into).boxed_unsync());
    let sandbox_token = target.token.clone();
    let resp = app
        .relay
        .forward(req, target.addr, &path_and_query, client, |headers| {
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
        })
        .await;
    match resp {
        Ok(resp) => Ok(resp.map(Body::new)),
        Err(RelayError::Uri(e)) => Err(Error::invalid(format!("invalid proxy path: {e}"))),
        // An exited container's port refuses at once: say so by its state, not as a 502.
        Err(other) => match app.service.unreachable(id).await {
            Some(state) => Err(state),
            None => Err(Error::new(
                StatusCode::BAD_GATEWAY,
                "SANDBOX::PROXY_ERROR",
                other.to_string(),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_paths_are_recognised() {
        assert!(is_proxy_path("/sandboxes/abc/proxy/44772/ping"));
        assert!(is_proxy_path("/v1/sandboxes/abc/proxy/8080"));
        assert!(!is_proxy_path("/sandboxes/abc/proxy/x/ping"));
        assert!(!is_proxy_path("/sandboxes/abc/endpoints/44772"));
        assert!(!is_proxy_path("/sandboxes//proxy/1"));
    }

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
        for bad in ["tail=0", "tail=10001", "tail=x", "tail=-1"] {
            let e = diagnostics_query(bad, now).unwrap_err();
            assert!(e.message.starts_with("tail"), "{bad}: {}", e.message);
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
            assert!(e.message.starts_with("since"), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn list_filters() {
        let f = list_filter("state=Running&state=paused&metadata=team%3Dml%26env%3Dprod&page=2&pageSize=5")
            .unwrap();
        assert_eq!(f.states, ["Running", "paused"]);
        assert_eq!(
            f.metadata,
            [("team".into(), "ml".into()), ("env".into(), "prod".into())]
        );
        assert_eq!((f.page, f.page_size), (2, 5));
        assert!(list_filter("page=0").is_err());
        assert!(list_filter("pageSize=201").is_err());
        assert_eq!(
            list_filter("metadata=%3Dx").unwrap_err().code,
            "INVALID_METADATA_FORMAT"
        );
    }
}

//! `X-Error-Format: detailed`: the request asks for seed 004's error body, so every error
//! response of sandboxd's own is re-rendered as the superset `{code, message, error_code,
//! description, error_detail, error_link?, solution, request_id}`. Without the header (or with
//! any other value) nothing changes: the official SDKs parse `{code, message}`, and upstream's
//! `ErrorResponse` allows no other fields.
//!
//! Handler errors, extractor rejections, the auth layer's 401s and the body limit's 413 all
//! leave their [`ApiError`] in the response's extensions (`ApiError::into_response`); an error
//! that did not (axum's own 405, a layer's own body) is described by its `code` if that is
//! catalogued, else by the general code of its status. A sandbox's own answers through the
//! server proxy ([`Relayed`]) are never touched.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::error::ApiError;
use super::proxy::Relayed;
use super::{App, RequestId};
use crate::wire::errors::{self, ErrorCode};

/// The request header that asks for the detailed body.
pub const HEADER: &str = "x-error-format";
/// Its one value that does.
const DETAILED: &[u8] = b"detailed";
/// Largest error body read to describe an error no `ApiError` described.
const MAX_READ: usize = 64 << 10;

/// The middleware (inside `request_id`, whose id the body names).
pub(super) async fn error_format(State(app): State<App>, req: Request, next: Next) -> Response {
    let wanted = req
        .headers()
        .get(HEADER)
        .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(DETAILED));
    if !wanted {
        return next.run(req).await;
    }
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|id| String::from_utf8_lossy(id.0.as_bytes()).into_owned())
        .unwrap_or_default();
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) || resp.extensions().get::<Relayed>().is_some()
    {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let (entry, message) = match parts.extensions.get::<ApiError>() {
        Some(api) => (api.entry, api.message.clone()),
        None => describe(status, body).await,
    };
    let detailed = entry.detailed(&message, &request_id, app.errors_docs_base_url.as_deref());
    let bytes = serde_json::to_vec(&detailed).expect("strings serialize");
    parts.headers.remove(header::CONTENT_LENGTH);
    parts
        .headers
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Response::from_parts(parts, Body::from(bytes))
}

/// The catalog entry and message of an error response no `ApiError` described: its
/// `{code, message}` when the code is catalogued, else the general code of the status with the
/// body's text (axum's rejections are one line of text) or the status's name.
async fn describe(status: StatusCode, body: Body) -> (&'static ErrorCode, String) {
    let fallback = || {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase()
    };
    let Ok(bytes) = axum::body::to_bytes(body, MAX_READ).await else {
        return (errors::for_status(status.as_u16()), fallback());
    };
    #[derive(serde::Deserialize)]
    struct Told {
        code: String,
        message: Option<String>,
    }
    if let Ok(told) = serde_json::from_slice::<Told>(&bytes) {
        if let Some(entry) = errors::lookup(&told.code) {
            return (entry, told.message.unwrap_or_else(fallback));
        }
    }
    let text = String::from_utf8_lossy(&bytes).trim().to_owned();
    let message = if text.is_empty() { fallback() } else { text };
    (errors::for_status(status.as_u16()), message)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::http::Request as HttpRequest;
    use axum::response::IntoResponse as _;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt as _;

    use super::*;
    use crate::orchestrator::error::Error;
    use crate::orchestrator::http::{router, API_KEY_HEADER};
    use crate::orchestrator::runtime::fake::{FakeRuntime, Op};
    use crate::orchestrator::runtime::RuntimeError;
    use crate::orchestrator::service::Service;
    use crate::relay::Relay;
    use crate::wire::errors::DetailedError;

    const KEY: &str = "k3y";
    const DOCS: &str = "https://docs.example.com/sandboxd";

    struct Rig {
        app: App,
        fake: FakeRuntime,
        _dir: tempfile::TempDir,
    }

    async fn rig() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeRuntime::start().await;
        let service = Service::for_tests(dir.path(), &fake, KEY, 3600, Duration::from_secs(10));
        let app = App {
            service,
            relay: Arc::new(Relay::new()),
            errors_docs_base_url: Some(DOCS.into()),
            limiter: Arc::new(crate::orchestrator::ratelimit::Limiter::new(Default::default())),
            metrics: Arc::new(crate::orchestrator::metrics::Metrics::new()),
            metrics_public: false,
            tickets: Default::default(),
        };
        Rig { app, fake, _dir: dir }
    }

    /// A request with the API key, the detailed header (when `format` is set) and a known id.
    fn request(method: &str, uri: &str, format: Option<&str>, body: impl Into<Body>) -> HttpRequest<Body> {
        let mut b = HttpRequest::builder()
            .method(method)
            .uri(uri)
            .header(API_KEY_HEADER, KEY)
            .header("x-request-id", "req-42")
            .header("content-type", "application/json");
        if let Some(f) = format {
            b = b.header(HEADER, f);
        }
        b.body(body.into()).unwrap()
    }

    async fn send(
        app: &App,
        req: HttpRequest<Body>,
    ) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let resp = router(app.clone()).oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (parts.status, parts.headers, json)
    }

    /// Asserts the detailed body: every field, the catalog's words for `code`, this request's id.
    fn assert_detailed(json: &serde_json::Value, code: &str, alias: &str) -> DetailedError {
        let body: DetailedError =
            serde_json::from_value(json.clone()).unwrap_or_else(|e| panic!("{e}: {json}"));
        let entry = errors::lookup(code).unwrap();
        assert_eq!(body.code, code, "{json}");
        assert_eq!(body.error_code, alias);
        assert_eq!(body.description, entry.description);
        assert_eq!(body.solution, entry.solution);
        assert_eq!(body.error_detail, body.message);
        assert!(!body.message.is_empty());
        assert_eq!(
            body.error_link.as_deref(),
            Some(&*format!("{DOCS}/errors#{code}"))
        );
        assert_eq!(body.request_id, "req-42");
        body
    }

    fn create_body(timeout: u64) -> String {
        serde_json::json!({
            "image": {"uri": "busybox"},
            "entrypoint": ["sleep", "infinity"],
            "timeout": timeout,
        })
        .to_string()
    }

    #[tokio::test]
    async fn a_handler_400_is_detailed_with_the_header_and_unchanged_without() {
        let rig = rig().await;
        let (status, headers, json) = send(
            &rig.app,
            request("POST", "/v1/sandboxes", Some("detailed"), create_body(5)),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let body = assert_detailed(&json, "SANDBOX::INVALID_PARAMETER", "Sandbox.InvalidParameter");
        assert!(body.error_detail.contains("timeout"), "{json}");
        assert_eq!(headers["x-request-id"], "req-42");
        assert_eq!(headers["content-type"], "application/json");

        for format in [None, Some("compact"), Some("")] {
            let (status, _, json) =
                send(&rig.app, request("POST", "/v1/sandboxes", format, create_body(5))).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{format:?}");
            let fields: Vec<&String> = json.as_object().unwrap().keys().collect();
            assert_eq!(fields, ["code", "message"], "{format:?}: {json}");
            assert_eq!(json["code"], "SANDBOX::INVALID_PARAMETER");
        }
        // Case and padding do not matter.
        let (_, _, json) = send(
            &rig.app,
            request("POST", "/v1/sandboxes", Some(" Detailed "), create_body(5)),
        )
        .await;
        assert_detailed(&json, "SANDBOX::INVALID_PARAMETER", "Sandbox.InvalidParameter");
    }

    #[tokio::test]
    async fn extractor_rejections_are_detailed() {
        let rig = rig().await;
        let (status, _, json) = send(
            &rig.app,
            request("POST", "/v1/sandboxes", Some("detailed"), "{not json"),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_detailed(&json, "SANDBOX::INVALID_PARAMETER", "Sandbox.InvalidParameter");
        let (status, _, json) = send(
            &rig.app,
            request(
                "GET",
                "/v1/sandboxes?metadata=%3Dx",
                Some("detailed"),
                Body::empty(),
            ),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_detailed(&json, "INVALID_METADATA_FORMAT", "Sandbox.InvalidParameter");
    }

    #[tokio::test]
    async fn the_auth_layers_401_is_detailed() {
        let rig = rig().await;
        let mut req = request("GET", "/v1/sandboxes", Some("detailed"), Body::empty());
        req.headers_mut()
            .insert(API_KEY_HEADER, HeaderValue::from_static("wrong"));
        let (status, _, json) = send(&rig.app, req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_detailed(&json, "INVALID_API_KEY", "Sandbox.Unauthorized");
        let mut req = request("GET", "/v1/sandboxes/abc", Some("detailed"), Body::empty());
        req.headers_mut().remove(API_KEY_HEADER);
        let (status, _, json) = send(&rig.app, req).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_detailed(&json, "MISSING_API_KEY", "Sandbox.Unauthorized");
    }

    #[tokio::test]
    async fn not_found_sandboxes_and_routes_are_detailed() {
        let rig = rig().await;
        let (status, _, json) = send(
            &rig.app,
            request("GET", "/v1/sandboxes/nope", Some("detailed"), Body::empty()),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_detailed(&json, "SANDBOX::NOT_FOUND", "Sandbox.SessionNotFound");
        let (status, _, json) = send(
            &rig.app,
            request("GET", "/v1/no/such/route", Some("detailed"), Body::empty()),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_detailed(&json, "GENERAL::NOT_FOUND", "Sandbox.ResourceNotFound");
    }

    #[tokio::test]
    async fn the_body_limits_413_is_detailed() {
        let rig = rig().await;
        let big = format!("{{\"image\": {{\"uri\": \"{}\"}}}}", "x".repeat(2 << 20));
        let (status, _, json) = send(&rig.app, request("POST", "/v1/sandboxes", Some("detailed"), big)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_detailed(&json, "SANDBOX::PAYLOAD_TOO_LARGE", "Sandbox.InvalidParameter");
    }

    #[tokio::test]
    async fn a_runtime_failure_500_is_detailed_and_tells_no_engine_text() {
        let rig = rig().await;
        rig.fake.fail(Op::Create, 1, || RuntimeError::Engine {
            op: "create the container",
            message: "devmapper: Thin Pool has 0 free data blocks".into(),
        });
        let (status, _, json) = send(
            &rig.app,
            request("POST", "/v1/sandboxes", Some("detailed"), create_body(600)),
        )
        .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        let body = assert_detailed(&json, "SANDBOX::RUNTIME_ERROR", "Sandbox.InternalError");
        assert!(!json.to_string().contains("Thin Pool"), "{json}");
        assert!(body.message.contains("X-Request-ID"));
    }

    #[tokio::test]
    async fn axums_own_405_gets_a_catalogued_code() {
        let rig = rig().await;
        let (status, headers, json) = send(
            &rig.app,
            request("PUT", "/v1/sandboxes", Some("detailed"), Body::empty()),
        )
        .await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert!(headers.contains_key("allow"));
        assert_detailed(&json, "GENERAL::METHOD_NOT_ALLOWED", "Sandbox.InvalidParameter");
    }

    #[tokio::test]
    async fn successes_are_untouched() {
        let rig = rig().await;
        let (status, _, json) = send(
            &rig.app,
            request("GET", "/v1/sandboxes", Some("detailed"), Body::empty()),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(json.get("items").is_some(), "{json}");
    }

    /// A 429 (the rate limiter's: an `ApiError` with its `Retry-After`), and a layer's own
    /// `{code, message}` body, through the middleware alone.
    #[tokio::test]
    async fn a_429_keeps_its_headers_and_a_foreign_body_is_looked_up() {
        let rig = rig().await;
        let limited = || async {
            let mut resp = ApiError::new(&errors::RATE_LIMIT_EXCEEDED, "slow down".into()).into_response();
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("3"));
            resp
        };
        let foreign = || async {
            (
                StatusCode::TOO_MANY_REQUESTS,
                axum::Json(
                    serde_json::json!({"code": "POOL::CAPACITY_EXHAUSTED", "message": "pool p is empty"}),
                ),
            )
        };
        let relayed = || async {
            let mut resp = (StatusCode::NOT_FOUND, "the sandbox's own 404").into_response();
            resp.extensions_mut().insert(Relayed);
            resp
        };
        let svc = Router::new()
            .route("/limited", get(limited))
            .route("/foreign", get(foreign))
            .route("/relayed", get(relayed))
            .layer(axum::middleware::from_fn_with_state(
                rig.app.clone(),
                error_format,
            ))
            .layer(axum::middleware::from_fn(
                |mut req: Request, next: Next| async move {
                    req.extensions_mut()
                        .insert(RequestId(HeaderValue::from_static("req-42")));
                    next.run(req).await
                },
            ));
        let call = |uri: &'static str| {
            let svc = svc.clone();
            async move {
                let resp = svc
                    .oneshot(
                        HttpRequest::get(uri)
                            .header(HEADER, "detailed")
                            .body(Body::empty())
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                let (parts, body) = resp.into_parts();
                let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
                (parts, bytes)
            }
        };
        let (parts, bytes) = call("/limited").await;
        assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(parts.headers[header::RETRY_AFTER], "3");
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let body = assert_detailed(&json, "RATE_LIMIT::EXCEEDED", "Sandbox.TooManyRequestsExection");
        assert_eq!(body.message, "slow down");

        let (parts, bytes) = call("/foreign").await;
        assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let body = assert_detailed(
            &json,
            "POOL::CAPACITY_EXHAUSTED",
            "Sandbox.TooManyRequestsExection",
        );
        assert_eq!(body.message, "pool p is empty");

        let (parts, bytes) = call("/relayed").await;
        assert_eq!(parts.status, StatusCode::NOT_FOUND);
        assert_eq!(
            &bytes[..],
            b"the sandbox's own 404",
            "a sandbox's answer is its own"
        );
    }

    #[test]
    fn domain_errors_leave_their_api_error_for_error_format() {
        // The middleware relies on every domain error answering through ApiError.
        let resp = Error::NoRoute.into_response();
        assert!(resp.extensions().get::<ApiError>().is_some());
    }
}

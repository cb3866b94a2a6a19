//! Extractors and the auth layer: `JsonBody<T>` (size limit, empty and malformed bodies as
//! clear 4xx), `Principal` (who is calling, resolved once by [`authenticate`]).

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use serde::de::DeserializeOwned;

use super::App;
use crate::orchestrator::auth::Principal;
use crate::orchestrator::error::{AuthFailure, Error};
use crate::wire::time::now_ms;

/// The API key header (upstream's name).
pub const API_KEY_HEADER: &str = "open-sandbox-api-key";
/// Largest JSON body accepted on lifecycle routes.
const MAX_BODY: usize = 1 << 20;

/// Resolves the caller's credentials (`OPEN-SANDBOX-API-KEY`, `Authorization: Bearer`), or
/// says why they are not good enough.
pub(super) fn principal(app: &App, headers: &HeaderMap) -> Result<Principal, Error> {
    let api_key = headers.get(API_KEY_HEADER).map(HeaderValue::as_bytes);
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    app.service
        .authority()
        .resolve(api_key, bearer, now_ms())
        .map_err(Error::Unauthenticated)
}

/// The token of `Bearer <token>` (scheme case-insensitive); other schemes are not ours.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

/// The auth route layer of the api router: puts the [`Principal`] in the request's
/// extensions, or answers 401.
pub(super) async fn authenticate(State(app): State<App>, mut req: Request, next: Next) -> Response {
    match principal(&app, req.headers()) {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// The caller, as the auth layer resolved it (a route outside that layer has none: 401).
pub struct Caller(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .map(Caller)
            .ok_or(Error::Unauthenticated(AuthFailure::Missing))
    }
}

/// A list's `page`: an integer ≥ 1.
pub(super) fn page(value: &str) -> Result<u32, Error> {
    value
        .parse()
        .ok()
        .filter(|&p| p >= 1)
        .ok_or_else(|| Error::invalid(format!("page must be an integer ≥ 1, got {value:?}")))
}

/// A list's `pageSize`: 1–200.
pub(super) fn page_size(value: &str) -> Result<u32, Error> {
    value
        .parse()
        .ok()
        .filter(|p| (1..=200).contains(p))
        .ok_or_else(|| Error::invalid(format!("pageSize must be from 1 to 200, got {value:?}")))
}

/// The whole body, at most `limit` bytes: too large is 413, a stalled client 408.
pub(super) async fn read_body(body: axum::body::Body, limit: usize) -> Result<bytes::Bytes, Error> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large =
            std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            Error::TooLarge { limit }
        } else if crate::serve::is_body_idle_timeout(&e) {
            Error::BodyTimeout
        } else {
            Error::invalid(format!("cannot read the body: {e}"))
        }
    })
}

/// A JSON body of at most 1 MiB: empty is 400, too large 413, malformed 400 naming the
/// problem.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Error;

    async fn from_request(req: Request, _: &S) -> Result<Self, Error> {
        let bytes = read_body(req.into_body(), MAX_BODY).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::invalid("a JSON body is required"));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| Error::invalid(format!("invalid JSON body: {e}")))
    }
}

/// An optional JSON body of at most 1 MiB (upstream's clients send none): empty is `None`,
/// otherwise as [`JsonBody`].
pub struct OptionalJsonBody<T>(pub Option<T>);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for OptionalJsonBody<T> {
    type Rejection = Error;

    async fn from_request(req: Request, _: &S) -> Result<Self, Error> {
        let bytes = read_body(req.into_body(), MAX_BODY).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJsonBody(None));
        }
        serde_json::from_slice(&bytes)
            .map(|v| OptionalJsonBody(Some(v)))
            .map_err(|e| Error::invalid(format!("invalid JSON body: {e}")))
    }
}

/// A `state` query value: comma-separated names, trimmed, empty ones dropped (the parameter
/// may also repeat; the caller extends its list with each).
pub(super) fn states(value: &str) -> impl Iterator<Item = String> + '_ {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        assert_eq!(bearer_token("Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic dXNlcg=="), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}

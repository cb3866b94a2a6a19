//! Extractors whose rejections use the shared `{code, message}` body: JSON bodies, query
//! strings (including repeated names), and the identity of `/v1/filesystem/{uid}/{gid}` routes.

use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::agent::files::identity::Identity;
use crate::wire::ErrorCode;

/// JSON body; malformed input is a 400 `INVALID_REQUEST_BODY` naming what is wrong.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(body_error)?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// JSON body that may be empty (then `T::default()`).
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(body_error)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        serde_json::from_slice(&bytes)
            .map(OptionalJson)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// Why a body could not be read: too large (413), its client went quiet (408), or broken
/// off (400).
pub fn body_error(e: BytesRejection) -> ApiError {
    use axum::extract::rejection::FailedToBufferBody;
    use axum::http::StatusCode;
    match &e {
        BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("request body too large: {e}"),
        ),
        _ if crate::serve::is_body_idle_timeout(&e) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::RequestTimeout,
            format!("cannot read body: {e}"),
        ),
        _ => ApiError::bad_request(format!("cannot read body: {e}")),
    }
}

/// Query string; malformed input is a 400 `INVALID_REQUEST_BODY`.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded_parse(query)
            .map(ApiQuery)
            .map_err(|e| ApiError::bad_request(format!("invalid query: {e}")))
    }
}

fn serde_urlencoded_parse<T: DeserializeOwned>(query: &str) -> Result<T, String> {
    axum::extract::Query::<T>::try_from_uri(&format!("/?{query}").parse().map_err(|e| format!("{e}"))?)
        .map(|q| q.0)
        .map_err(|e| e.body_text())
}

/// The query string as name/value pairs, with repeated names kept (`?path=a&path=b`). Values
/// are percent-decoded strictly: bytes that are not UTF-8 are a 400, never silently replaced.
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Every value of `name`, in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The first value of `name`, which must be present and not empty.
    pub fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::missing_query(name))
    }

    /// The first value of `name` parsed as `T`, if present.
    pub fn parse<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, ApiError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::bad_request(format!("invalid value {v:?} for query parameter {name}"))
                })
            })
            .transpose()
    }

    /// Whether `name` is `true` or `1`.
    pub fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("true" | "1" | "yes"))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parse_query(parts.uri.query().unwrap_or_default()).map(Params)
    }
}

pub(crate) fn parse_query(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = percent_decode(k)?;
            let v = percent_decode(v).map_err(|_| {
                ApiError::bad_request(format!(
                    "query parameter {k} is not valid UTF-8 once decoded (names that are not UTF-8 cannot be addressed)"
                ))
            })?;
            Ok((k, v))
        })
        .collect()
}

fn percent_decode(s: &str) -> Result<String, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| ApiError::bad_request("query is not valid UTF-8"))
}

/// The `Last-Event-ID` header of a resuming SSE client: the id of the last event it has, or
/// `None` when absent. Anything but a decimal event id is a 400.
pub struct LastEventId(pub Option<u64>);

impl<S: Send + Sync> FromRequestParts<S> for LastEventId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        match parts.headers.get("last-event-id") {
            None => Ok(LastEventId(None)),
            Some(v) => parse_last_event_id(v)
                .map(|id| LastEventId(Some(id)))
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID must be an event id")),
        }
    }
}

/// The event id a `Last-Event-ID` header value names: decimal digits, surrounding blanks
/// allowed; `None` for anything else.
pub(crate) fn parse_last_event_id(value: &axum::http::HeaderValue) -> Option<u64> {
    value.to_str().ok()?.trim().parse::<u64>().ok()
}

/// The identity of a `/v1/filesystem/{uid}/{gid}/…` request, or `None` on the classic routes.
pub struct FsIdentity(pub Option<Identity>);

impl<S: Send + Sync> FromRequestParts<S> for FsIdentity {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Ok(params) = RawPathParams::from_request_parts(parts, state).await else {
            return Ok(FsIdentity(None));
        };
        let mut uid = None;
        let mut gid = None;
        for (k, v) in &params {
            let id = || {
                v.parse::<u32>().ok().filter(|n| *n != u32::MAX).ok_or_else(|| {
                    ApiError::bad_request(format!("{k} must be a number from 0 to 4294967294, not {v:?}"))
                })
            };
            match k {
                "uid" => uid = Some(id()?),
                "gid" => gid = Some(id()?),
                _ => {}
            }
        }
        Ok(FsIdentity(match (uid, gid) {
            (Some(uid), Some(gid)) => Some(Identity { uid, gid }),
            _ => None,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs() {
        let q = parse_query("path=%2Fa%20b&path=c+d&x=&verbose=true").unwrap();
        let p = Params(q);
        assert_eq!(p.all("path"), ["/a b", "c d"]);
        assert_eq!(p.get("x"), Some(""));
        assert!(p.flag("verbose"));
        assert!(parse_query("path=%FF").is_err());
        assert_eq!(Params(parse_query("a=100%").unwrap()).get("a"), Some("100%"));
    }
}

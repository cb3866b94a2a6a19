//! The rate-limit route layer (design §5): each API route group carries one class with
//! [`limited`], inside the auth layer, so the [`Principal`] it keys on is already resolved.
//! A refusal is a 429 `RATE_LIMIT::EXCEEDED` with `Retry-After` (whole seconds, at least 1)
//! and the IETF draft's `RateLimit-Policy` and `RateLimit` headers.
//!
//! A request takes its token before its handler runs, so a create that then fails
//! validation has still spent one: a flood of bad creates is limited like any other.
//!
//! The layer also hands the caller's id to the metrics layer in the response's extensions,
//! so the summary attributes every API request, refused ones included.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderValue;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse as _, Response};
use axum::Router;

use super::metrics::Attributed;
use super::App;
use crate::orchestrator::auth::Principal;
use crate::orchestrator::error::Error;
use crate::orchestrator::ratelimit::{key_of, Class, Limiter, Refusal};

/// What one group's layer holds.
#[derive(Clone)]
pub(super) struct Limited {
    limiter: Arc<Limiter>,
    class: Class,
}

/// `routes`, each limited in `class` (a class switched off still attributes requests).
pub(super) fn limited(routes: Router<App>, app: &App, class: Class) -> Router<App> {
    let state = Limited {
        limiter: app.limiter.clone(),
        class,
    };
    routes.route_layer(middleware::from_fn_with_state(state, limit))
}

async fn limit(State(l): State<Limited>, req: Request, next: Next) -> Response {
    let principal = req.extensions().get::<Principal>();
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let key = key_of(principal, client);
    let attributed = principal.map(|p| Attributed(p.id.clone()));
    let mut resp = match l.limiter.check(l.class, &key) {
        Ok(()) => next.run(req).await,
        Err(refusal) => refused(refusal),
    };
    if let Some(a) = attributed {
        resp.extensions_mut().insert(a);
    }
    resp
}

/// The 429 and its headers.
fn refused(r: Refusal) -> Response {
    let mut resp = Error::RateLimited {
        class: r.class,
        retry_after: r.retry_after,
    }
    .into_response();
    let class = r.class.as_str();
    let headers = resp.headers_mut();
    for (name, value) in [
        ("retry-after", r.retry_after.to_string()),
        (
            "ratelimit-policy",
            format!("\"{class}\";q={};w={}", r.policy.quota, r.policy.window),
        ),
        ("ratelimit", format!("\"{class}\";r=0;t={}", r.retry_after)),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::orchestrator::ratelimit::Policy;

    #[tokio::test]
    async fn a_refusal_is_a_429_with_the_three_headers() {
        let resp = refused(Refusal {
            class: Class::Create,
            retry_after: 2,
            policy: Policy { quota: 20, window: 2 },
        });
        assert_eq!(resp.status(), 429);
        let h = |n: &str| resp.headers()[n].to_str().unwrap().to_owned();
        assert_eq!(h("retry-after"), "2");
        assert_eq!(h("ratelimit-policy"), "\"create\";q=20;w=2");
        assert_eq!(h("ratelimit"), "\"create\";r=0;t=2");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "code": "RATE_LIMIT::EXCEEDED",
                "message": "rate limit for class 'create' exceeded; retry after 2 s",
            })
        );
    }
}

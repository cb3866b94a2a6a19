//! The one place sandboxd speaks execd's HTTP: today the readiness probe (`GET /ping`), later
//! commands, code, files and event streams for builds, executions and pool warm-up.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::runtime::Target;
use crate::auth::TOKEN_HEADER;

/// How long one probe may take.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// What `/ping` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ping {
    /// 200: execd serves.
    Ready,
    /// Any other answer, no answer, or no connection yet.
    NotYet,
}

/// A client for the execd of any sandbox.
pub struct ExecdClient {
    http: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for ExecdClient {
    fn default() -> Self {
        Self::new()
    }
}

impl ExecdClient {
    /// A client with short connect timeouts and no pooled connections (probes are one-off).
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(PING_TIMEOUT));
        Self {
            http: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(connector),
        }
    }

    /// `GET /ping` on the execd behind `target`, with the sandbox's token.
    pub async fn ping(&self, target: &Target, token: &str) -> Ping {
        let uri = format!("http://{}{}/ping", target.dial, target.prefix);
        let Ok(req) = hyper::Request::get(uri)
            .header(TOKEN_HEADER, token)
            .body(Empty::new())
        else {
            return Ping::NotYet;
        };
        match tokio::time::timeout(PING_TIMEOUT, self.http.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => Ping::Ready,
            _ => Ping::NotYet,
        }
    }
}

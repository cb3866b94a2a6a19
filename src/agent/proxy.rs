//! The port proxy: `/proxy/{port}/{path}` reaches `http://127.0.0.1:{port}/{path}` inside the
//! sandbox, through the shared streaming relay ([`crate::relay`]). Only ever dials 127.0.0.1,
//! never execd's own port, and never passes the access token on. `/proxy/{execd's own port}`
//! is served by the HTTP edge (`http/proxy.rs`) in-process, once per request; this module says
//! which targets those are and refuses to dial them, so that no request can make execd
//! connect to itself (one such request used to chain through thousands of connections).
//! The HTTP edge turns its errors into responses. Async.

use std::net::{Ipv4Addr, SocketAddr};

use hyper::body::Incoming;
use hyper::header::HeaderName;
use hyper::{Request, Response};

use crate::relay::{Relay, RelayBody, RelayError};

/// Why a request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// `/proxy` or `/proxy/` without a port.
    #[error("port is required")]
    MissingPort,
    /// The port segment is not a number from 1 to 65535.
    #[error("invalid port {0:?}")]
    InvalidPort(String),
    /// The path and query do not form a valid URI.
    #[error("invalid target path: {0}")]
    Uri(#[source] hyper::http::Error),
    /// Nothing accepted the connection on that port.
    #[error("cannot connect to port {port}: {source}")]
    Connect {
        /// The target port.
        port: u16,
        /// What the client reported.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The target is execd itself, reached again from a request that execd is already serving
    /// through its own port (`/proxy/{port}/proxy/{port}/…`).
    #[error("proxy loop: /proxy/{port} is execd itself and may appear only once in a path")]
    Loop {
        /// execd's own port.
        port: u16,
    },
    /// The target broke off before answering.
    #[error("port {port} did not answer: {source}")]
    Upstream {
        /// The target port.
        port: u16,
        /// What the client reported.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
}

/// Where a proxied request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Port on 127.0.0.1.
    pub port: u16,
    /// Path (always starting with `/`, still percent-encoded as received) and query.
    pub path_and_query: String,
}

impl Target {
    /// Parses the request path `/proxy/{port}[/{rest}]` and its query.
    pub fn parse(path: &str, query: Option<&str>) -> Result<Self, ProxyError> {
        let rest = path.strip_prefix("/proxy").ok_or(ProxyError::MissingPort)?;
        let rest = rest.strip_prefix('/').ok_or(ProxyError::MissingPort)?;
        let (port, tail) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if port.is_empty() {
            return Err(ProxyError::MissingPort);
        }
        let valid = port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit());
        let port = valid
            .then(|| port.parse::<u16>().ok())
            .flatten()
            .filter(|&p| p != 0)
            .ok_or_else(|| ProxyError::InvalidPort(port.to_owned()))?;
        let mut path_and_query = tail.to_owned();
        if let Some(q) = query {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }
        Ok(Self { port, path_and_query })
    }

    /// The target's path and query as an origin-form URI, percent-encoding untouched.
    pub fn uri(&self) -> Result<hyper::Uri, ProxyError> {
        hyper::Uri::try_from(self.path_and_query.as_str()).map_err(|e| ProxyError::Uri(e.into()))
    }
}

/// The proxy: the relay plus what it must know about execd itself.
pub struct Proxy {
    relay: Relay,
    /// execd's own port: never dialled, served in-process by the HTTP edge instead.
    own_port: u16,
    /// The access token header, removed from every proxied request.
    token_header: HeaderName,
}

impl Proxy {
    /// A proxy for an execd listening on `own_port`, whose token travels in `token_header`.
    pub fn new(own_port: u16, token_header: HeaderName) -> Self {
        Self {
            relay: Relay::new(),
            own_port,
            token_header,
        }
    }

    /// Whether `target` is execd itself, which is served in-process, not dialled.
    pub fn is_execd(&self, target: &Target) -> bool {
        target.port == self.own_port
    }

    /// The error for a request that reaches execd's own port a second time.
    pub fn loop_error(&self) -> ProxyError {
        ProxyError::Loop { port: self.own_port }
    }

    /// Sends `req` to `target` and returns the target's answer with its body still streaming
    /// (WebSocket upgrades become tunnels). `client` is the peer's address. execd itself is
    /// refused ([`ProxyError::Loop`]): a connection back to its own port would start a new
    /// request that could proxy again, without limit.
    pub async fn forward(
        &self,
        req: Request<RelayBody>,
        target: &Target,
        client: Option<SocketAddr>,
    ) -> Result<Response<Incoming>, ProxyError> {
        if self.is_execd(target) {
            return Err(self.loop_error());
        }
        let port = target.port;
        let dest = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        self.relay
            .forward(req, dest, &target.path_and_query, client, |headers| {
                headers.remove(&self.token_header);
            })
            .await
            .map_err(|e| match e {
                RelayError::Uri(e) => ProxyError::Uri(e),
                RelayError::Connect { source, .. } => ProxyError::Connect { port, source },
                RelayError::Upstream { source, .. } => ProxyError::Upstream { port, source },
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("/proxy/8080/a/b%20c", Some("x=1&y")).unwrap();
        assert_eq!(t.port, 8080);
        assert_eq!(t.path_and_query, "/a/b%20c?x=1&y");
        assert_eq!(Target::parse("/proxy/3000", None).unwrap().path_and_query, "/");
        assert_eq!(Target::parse("/proxy/3000/", None).unwrap().path_and_query, "/");
        for missing in ["/proxy", "/proxy/", "/proxy//x"] {
            assert!(
                matches!(Target::parse(missing, None), Err(ProxyError::MissingPort)),
                "{missing}"
            );
        }
        for bad in [
            "/proxy/abc/x",
            "/proxy/0/",
            "/proxy/65536/",
            "/proxy/+80/",
            "/proxy/-1",
            "/proxy/080000/",
        ] {
            assert!(
                matches!(Target::parse(bad, None), Err(ProxyError::InvalidPort(_))),
                "{bad}"
            );
        }
        assert_eq!(Target::parse("/proxy/65535", None).unwrap().port, 65535);
        let t = Target::parse("/proxy/1/pty/a%2Fb/ws", Some("since=0&x=%20")).unwrap();
        assert_eq!(t.uri().unwrap(), "/pty/a%2Fb/ws?since=0&x=%20");
    }

    #[tokio::test]
    async fn never_dials_itself() {
        let proxy = Proxy::new(4242, HeaderName::from_static("x-token"));
        let target = Target::parse("/proxy/4242/ping", None).unwrap();
        assert!(proxy.is_execd(&target));
        let req = Request::new(RelayBody::default());
        let err = proxy.forward(req, &target, None).await.unwrap_err();
        assert!(matches!(err, ProxyError::Loop { port: 4242 }), "{err}");
    }
}

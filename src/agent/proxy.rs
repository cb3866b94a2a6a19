//! The port proxy: `/proxy/{port}/{path}` reaches `http://127.0.0.1:{port}/{path}` inside the
//! sandbox. Request and response bodies stream through with hyper's own backpressure (nothing
//! is buffered whole, so server-sent events arrive as they are written), connection upgrades
//! (WebSocket) are relayed as raw byte tunnels, and hop-by-hop headers are dropped while
//! `X-Forwarded-For`/`-Proto` are set, as a reverse proxy should.
//!
//! Only ever dials 127.0.0.1. Uses hyper directly (a pooled HTTP/1 client), never axum; the
//! HTTP edge (`http/proxy.rs`) turns its errors into responses. Async.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::task::JoinSet;

/// The error type of bodies going through the proxy.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A request body on its way to the target.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Headers meaningful for one connection only (RFC 9110 §7.6.1), never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

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
}

/// The proxy: a connection pool to 127.0.0.1 and the tunnels of upgraded connections.
pub struct Proxy {
    client: Client<HttpConnector, ProxyBody>,
    /// execd's own port: requests looping back to execd keep the access token.
    own_port: u16,
    /// The access token header, removed from requests to every other port.
    token_header: HeaderName,
    /// Byte tunnels of upgraded (WebSocket) connections. Each ends when either side closes;
    /// dropping the proxy aborts the rest.
    tunnels: Mutex<JoinSet<()>>,
}

impl Proxy {
    /// A proxy for an execd listening on `own_port`, whose token travels in `token_header`.
    pub fn new(own_port: u16, token_header: HeaderName) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self {
            client,
            own_port,
            token_header,
            tunnels: Mutex::new(JoinSet::new()),
        }
    }

    /// Sends `req` to `target` and returns the target's answer with its body still streaming.
    /// A `101 Switching Protocols` answer also starts the tunnel between the two upgraded
    /// connections. `client` is the peer's address, for `X-Forwarded-For`.
    pub async fn forward(
        &self,
        mut req: Request<ProxyBody>,
        target: &Target,
        client: Option<SocketAddr>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let uri = Uri::builder()
            .scheme("http")
            .authority(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), target.port).to_string())
            .path_and_query(target.path_and_query.as_str())
            .build()
            .map_err(ProxyError::Uri)?;
        let upgrade = upgrade_protocol(req.headers());
        let downstream = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

        let (parts, body) = req.into_parts();
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers);
        if let Some(protocol) = &upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol.clone());
        }
        if target.port != self.own_port {
            headers.remove(&self.token_header);
        }
        set_forwarded(&mut headers, client);

        let mut out = Request::new(body);
        *out.method_mut() = parts.method;
        *out.uri_mut() = uri;
        *out.version_mut() = Version::HTTP_11;
        *out.headers_mut() = headers;

        let port = target.port;
        let mut resp = self.client.request(out).await.map_err(|source| {
            if source.is_connect() {
                ProxyError::Connect { port, source }
            } else {
                ProxyError::Upstream { port, source }
            }
        })?;

        match downstream {
            Some(downstream) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let upstream = hyper::upgrade::on(&mut resp);
                self.spawn_tunnel(port, downstream, upstream);
            }
            _ => strip_hop_by_hop(resp.headers_mut()),
        }
        Ok(resp)
    }

    /// Relays bytes both ways between the client's and the target's upgraded connections.
    fn spawn_tunnel(
        &self,
        port: u16,
        downstream: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
    ) {
        let mut tunnels = self.tunnels.lock().unwrap_or_else(|e| e.into_inner());
        while tunnels.try_join_next().is_some() {} // reap finished ones
        tunnels.spawn(async move {
            let (down, up) = match tokio::try_join!(downstream, upstream) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(port, error = %e, "proxy upgrade failed");
                    return;
                }
            };
            let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
            if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                tracing::debug!(port, error = %e, "proxy tunnel ended");
            }
        });
    }
}

/// The protocol asked for when the request is an upgrade (`Connection: upgrade` plus an
/// `Upgrade` header).
fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let wants = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    wants.then(|| headers.get(header::UPGRADE).cloned()).flatten()
}

/// Removes the hop-by-hop headers, including every header the `Connection` header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove(header::UPGRADE);
}

/// Appends the client to `X-Forwarded-For`, sets `X-Forwarded-Proto: http` unless a proxy in
/// front already said, and drops `X-Forwarded-Host`, as upstream's execd does.
fn set_forwarded(headers: &mut HeaderMap, client: Option<SocketAddr>) {
    const XFF: &str = "x-forwarded-for";
    if let Some(addr) = client {
        let ip = addr.ip().to_canonical().to_string();
        let value = match headers.get(XFF).and_then(|v| v.to_str().ok()) {
            Some(prior) if !prior.trim().is_empty() => format!("{prior}, {ip}"),
            _ => ip,
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(XFF, value);
        }
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
    headers.remove("x-forwarded-host");
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
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("content-type"));
    }

    #[test]
    fn upgrades_are_recognized() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("keep-alive, Upgrade"));
        h.insert("upgrade", HeaderValue::from_static("websocket"));
        assert_eq!(upgrade_protocol(&h).unwrap(), "websocket");
        h.insert("connection", HeaderValue::from_static("keep-alive"));
        assert_eq!(upgrade_protocol(&h), None);
    }

    #[test]
    fn forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-host", HeaderValue::from_static("evil"));
        set_forwarded(&mut h, Some("10.1.2.3:5555".parse().unwrap()));
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("x-forwarded-host"));

        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        set_forwarded(&mut h, Some("[::ffff:127.0.0.1]:1".parse().unwrap()));
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}

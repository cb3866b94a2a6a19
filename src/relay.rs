//! A streaming HTTP/1 reverse-proxy hop, shared by execd's port proxy (`/proxy/{port}`) and
//! sandboxd's server proxy (`/sandboxes/{id}/proxy/{port}`).
//!
//! Request and response bodies stream through with hyper's own backpressure (nothing is
//! buffered whole, so server-sent events arrive as they are written), connection upgrades
//! (WebSocket) are relayed as raw byte tunnels, and hop-by-hop headers are dropped while
//! `X-Forwarded-For`/`-Proto` are set, as a reverse proxy should. The caller decides where a
//! request goes and edits its headers (credentials) on the way; this module only carries it.
//!
//! Nothing it opens outlives its use: an abandoned response or request body closes the target
//! connection (hyper does not pool a connection in mid-message), idle pooled connections are
//! closed by a timer after [`POOL_IDLE`] and at most [`POOL_MAX_IDLE`] are kept per target, and
//! a tunnel ends both connections once either side has finished (after [`HALF_CLOSE_LINGER`]
//! for the other side's last bytes).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinSet;

/// The error type of bodies going through the relay.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A request body on its way to the target.
pub type RelayBody = UnsyncBoxBody<Bytes, BoxError>;

/// How long an idle pooled connection stays open. Reconnecting to a sandbox-local port costs
/// a fraction of a millisecond; every idle connection holds a descriptor on both ends.
pub const POOL_IDLE: Duration = Duration::from_secs(10);
/// Idle pooled connections kept per target; more concurrent requests open more connections,
/// which are closed when they finish instead of waiting in the pool.
pub const POOL_MAX_IDLE: usize = 16;
/// How long a tunnel stays open after one side has finished sending (EOF or error): time for
/// the other side's last bytes, such as the answer to a WebSocket close, not for a half-open
/// tunnel to live on. Without this bound a peer that never closes its side (or is gone without
/// a FIN) would pin both connections forever.
pub const HALF_CLOSE_LINGER: Duration = Duration::from_secs(5);

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

/// Why a request could not be relayed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The path and query do not form a valid URI.
    #[error("invalid target path: {0}")]
    Uri(#[source] hyper::http::Error),
    /// Nothing accepted the connection.
    #[error("cannot connect to {dest}: {source}")]
    Connect {
        /// Where the request was going.
        dest: SocketAddr,
        /// What the client reported.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// The target broke off before answering.
    #[error("{dest} did not answer: {source}")]
    Upstream {
        /// Where the request was going.
        dest: SocketAddr,
        /// What the client reported.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
}

/// A connection pool and the tunnels of upgraded connections.
pub struct Relay {
    client: Client<HttpConnector, RelayBody>,
    /// Byte tunnels of upgraded (WebSocket) connections, and the connections of
    /// [`Relay::forward_over`]. Each ends when either side closes (an exchange's connection:
    /// once answered); dropping the relay aborts the rest.
    tunnels: Mutex<JoinSet<()>>,
}

impl Default for Relay {
    fn default() -> Self {
        Self::new()
    }
}

impl Relay {
    /// A relay with a pooled HTTP/1 client (TCP_NODELAY, 10 s connect timeout, idle connections
    /// closed after [`POOL_IDLE`], at most [`POOL_MAX_IDLE`] per target).
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(10)));
        // Without a timer hyper never expires idle connections (it only checks their age when
        // one is taken out again), so every connection a burst opened stayed open for good.
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(POOL_MAX_IDLE)
            .build(connector);
        Self {
            client,
            tunnels: Mutex::new(JoinSet::new()),
        }
    }

    /// Sends `req` to `http://{dest}{path_and_query}` and returns the answer with its body still
    /// streaming. `edit` adjusts the outgoing headers after the hop-by-hop ones are gone (to
    /// drop or add credentials). A `101 Switching Protocols` answer also starts the tunnel
    /// between the two upgraded connections. `client` is the peer, for `X-Forwarded-For`.
    pub async fn forward(
        &self,
        req: Request<RelayBody>,
        dest: SocketAddr,
        path_and_query: &str,
        client: Option<SocketAddr>,
        edit: impl FnOnce(&mut HeaderMap),
    ) -> Result<Response<Incoming>, RelayError> {
        let uri = Uri::builder()
            .scheme("http")
            .authority(dest.to_string())
            .path_and_query(path_and_query)
            .build()
            .map_err(RelayError::Uri)?;
        let (out, downstream) = outgoing(req, uri, client, edit);
        let mut resp = self.client.request(out).await.map_err(|source| {
            if source.is_connect() {
                RelayError::Connect { dest, source }
            } else {
                RelayError::Upstream { dest, source }
            }
        })?;
        self.answer(&mut resp, downstream, dest.to_string());
        Ok(resp)
    }

    /// [`Relay::forward`] over `io`, a connection the caller opened to the target (a runtime's
    /// tunnel to a sandbox port sandboxd cannot route to), named `dest` in logs: one exchange
    /// on its own connection (nothing pooled), the rest as `forward`.
    pub async fn forward_over<S>(
        &self,
        req: Request<RelayBody>,
        io: S,
        dest: &str,
        path_and_query: &str,
        client: Option<SocketAddr>,
        edit: impl FnOnce(&mut HeaderMap),
    ) -> Result<Response<Incoming>, OverError>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let uri = Uri::builder()
            .path_and_query(path_and_query)
            .build()
            .map_err(OverError::Uri)?;
        let (out, downstream) = outgoing(req, uri, client, edit);
        let mut resp = send_over(io, out, &self.tunnels)
            .await
            .map_err(OverError::Upstream)?;
        self.answer(&mut resp, downstream, dest.to_owned());
        Ok(resp)
    }

    /// The target's answer on its way back: a `101` to an upgrade starts the tunnel, anything
    /// else loses its hop-by-hop headers.
    fn answer(
        &self,
        resp: &mut Response<Incoming>,
        downstream: Option<hyper::upgrade::OnUpgrade>,
        dest: String,
    ) {
        match downstream {
            Some(downstream) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let upstream = hyper::upgrade::on(resp);
                self.spawn_tunnel(dest, downstream, upstream);
            }
            _ => strip_hop_by_hop(resp.headers_mut()),
        }
    }

    /// Relays bytes both ways between the client's and the target's upgraded connections.
    fn spawn_tunnel(
        &self,
        dest: String,
        downstream: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
    ) {
        let mut tunnels = self.tunnels.lock().unwrap_or_else(|e| e.into_inner());
        while tunnels.try_join_next().is_some() {} // reap finished ones
        tunnels.spawn(async move {
            let (down, up) = match tokio::try_join!(downstream, upstream) {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(dest = %dest, error = %e, "relay upgrade failed");
                    return;
                }
            };
            tunnel(TokioIo::new(down), TokioIo::new(up), HALF_CLOSE_LINGER).await;
            tracing::debug!(dest = %dest, "relay tunnel ended");
        });
    }
}

/// The request as it goes to the target: `uri`, HTTP/1.1, no hop-by-hop headers (but the
/// upgrade asked for, if any), `X-Forwarded-*` set, then `edit`ed; and the client's side of
/// the upgrade, when it asked for one.
fn outgoing(
    mut req: Request<RelayBody>,
    uri: Uri,
    client: Option<SocketAddr>,
    edit: impl FnOnce(&mut HeaderMap),
) -> (Request<RelayBody>, Option<hyper::upgrade::OnUpgrade>) {
    let upgrade = upgrade_protocol(req.headers());
    let downstream = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));

    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    if let Some(protocol) = &upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol.clone());
    }
    set_forwarded(&mut headers, client);
    edit(&mut headers);

    let mut out = Request::new(body);
    *out.method_mut() = parts.method;
    *out.uri_mut() = uri;
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = headers;
    (out, downstream)
}

/// Why [`Relay::forward_over`] could not relay a request.
#[derive(Debug, thiserror::Error)]
pub enum OverError {
    /// The path and query do not form a valid URI.
    #[error("invalid target path: {0}")]
    Uri(#[source] hyper::http::Error),
    /// The exchange over the connection failed.
    #[error("the target did not answer: {0}")]
    Upstream(#[source] hyper::Error),
}

/// Sends `req` over `io`, a connection the caller opened: one HTTP/1 exchange (upgrades
/// allowed), the request line in origin form, `Host` from the URI's authority unless the
/// request has one. The connection's task goes into `tasks`, its owner (dropping the set
/// aborts it); it ends by itself once the answer is read, or hands the stream to the upgrade.
pub async fn send_over<S, B>(
    io: S,
    mut req: Request<B>,
    tasks: &Mutex<JoinSet<()>>,
) -> Result<Response<Incoming>, hyper::Error>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    if let Some(authority) = req.uri().authority().cloned() {
        if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
            req.headers_mut().entry(header::HOST).or_insert(host);
        }
    }
    let origin = req
        .uri()
        .path_and_query()
        .cloned()
        .map_or_else(|| Uri::from_static("/"), Uri::from);
    *req.uri_mut() = origin;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    {
        let mut tasks = tasks.lock().unwrap_or_else(|e| e.into_inner());
        while tasks.try_join_next().is_some() {} // reap finished ones
        tasks.spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "a tunnelled connection failed");
            }
        });
    }
    sender.send_request(req).await
}

/// Copies bytes both ways between `a` and `b` until one direction has finished (EOF or error),
/// passes the end on (shuts the other side's write half), gives the other direction `linger`
/// to finish, then drops both connections. Unlike `copy_bidirectional`, which waits for both
/// directions without limit, this cannot be held open by a peer that never closes.
async fn tunnel<A, B>(a: A, b: B, linger: Duration)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    let a_to_b = async {
        let copied = tokio::io::copy(&mut a_read, &mut b_write).await;
        let _ = b_write.shutdown().await;
        copied
    };
    let b_to_a = async {
        let copied = tokio::io::copy(&mut b_read, &mut a_write).await;
        let _ = a_write.shutdown().await;
        copied
    };
    tokio::pin!(a_to_b, b_to_a);
    let rest = tokio::select! {
        _ = &mut a_to_b => tokio::time::timeout(linger, b_to_a).await,
        _ = &mut b_to_a => tokio::time::timeout(linger, a_to_b).await,
    };
    if rest.is_err() {
        tracing::debug!("relay tunnel half-open for too long; closing it");
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_tunnel_carries_bytes_both_ways() {
        let (mut client, a) = tokio::io::duplex(64);
        let (b, mut server) = tokio::io::duplex(64);
        let tunnel = tokio::spawn(tunnel(a, b, Duration::from_secs(60)));
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        server.write_all(b"pong").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        // A half-close is passed on, and the other side's last bytes still get through.
        client.shutdown().await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 0, "EOF passed on");
        server.write_all(b"bye!").await.unwrap();
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"bye!");
        drop(server);
        tokio::time::timeout(Duration::from_secs(10), tunnel)
            .await
            .expect("tunnel ends once both sides have")
            .unwrap();
    }

    #[tokio::test]
    async fn a_tunnel_does_not_outlive_one_side_for_long() {
        let (client, a) = tokio::io::duplex(64);
        let (b, mut server) = tokio::io::duplex(64);
        let tunnel = tokio::spawn(tunnel(a, b, Duration::from_millis(50)));
        drop(client);
        let mut buf = [0u8; 1];
        assert_eq!(server.read(&mut buf).await.unwrap(), 0, "EOF passed on");
        // The server never closes its side: the tunnel still ends, after the linger.
        tokio::time::timeout(Duration::from_secs(10), tunnel)
            .await
            .expect("a half-open tunnel is closed")
            .unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
        assert!(
            server.write_all(b"x").await.is_err(),
            "the tunnel dropped its end"
        );
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
